"""Links: an app gets a managed database's in-network URL as an env var at its next release.

The URL is never stored: the deploy pipeline (and the reconciler) asks ``resolve`` at
container start, which opens the sealed password in memory. A link change bumps the app's
``env_version`` like an env change does, so releases record which set they ran with.
"""

from __future__ import annotations

from control.domain.databases import ENGINES, Status, connection_url
from control.domain.env import RESERVED_NAMES, RESERVED_PREFIX
from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.names import ENV_NAME
from control.domain.records import ConfigLink, Link
from control.ids import new_id
from control.security.keyring import ReloadingKeyring
from control.store.database import Store
from control.store.repositories.databases import DatabaseRepository
from control.store.repositories.env_vars import EnvVarRepository
from control.store.repositories.links import LinkRepository
from runtime.databases.engines import POSTGRES

DEFAULT_ENV_NAME = {POSTGRES: "DATABASE_URL", **{e: "REDIS_URL" for e in ENGINES if e != POSTGRES}}


def check_env_name(name: str) -> None:
    if not ENV_NAME.accepts(name):
        message = f"must be {ENV_NAME.kind}: {ENV_NAME.rule}"
    elif name in RESERVED_NAMES or name.upper().startswith(RESERVED_PREFIX):
        message = f"reserved: {sorted(RESERVED_NAMES)} and {RESERVED_PREFIX}* are set by the platform"
    else:
        return
    raise Invalid(f"'env_name' {name[:80]!r} is not usable: {message}.", errors=[{"field": "env_name", "message": message}])


class LinkedDatabaseGone(Exception):
    def __init__(self, env_name: str, database_id: str) -> None:
        super().__init__(f"{env_name} was linked to database {database_id}, which no longer exists")
        self.env_name, self.database_id = env_name, database_id


class LinkService:
    def __init__(self, db: Store, keyring: ReloadingKeyring) -> None:
        self.db = db
        self.keyring = keyring

    def create(
        self, tenant_id: str, app_ref: str, database_ref: str, env_name: str | None = None, *, previews: bool = False
    ) -> Link:
        """``previews``: a preview's too (the databases forked for it from a snapshot)."""
        if env_name is not None:
            check_env_name(env_name)
        with self.db.write() as session:
            env = EnvVarRepository(session, tenant_id)
            app = env.app(app_ref, previews=previews)
            if app is None:
                raise NotFound.of("app", app_ref)
            database = DatabaseRepository(session, tenant_id).get(database_ref)
            if database is None:
                raise NotFound.of("database", database_ref)
            if database.status in (Status.DELETING, Status.DELETED):
                raise Conflict(f"Database '{database.name}' is {database.status}; link another one.", code="database-deleted")
            name = env_name or DEFAULT_ENV_NAME[database.engine]
            links = LinkRepository(session, tenant_id)
            existing = links.for_app(app.id)
            for link in existing:
                if link.env_name == name:
                    raise Conflict(
                        f"App '{app.name}' already gets {name} from database '{link.database_name}' "
                        f"(link {link.id}); pick another env_name or remove that link first.",
                        code="link-conflict",
                    )
                if link.database_id == database.id:
                    raise Conflict(
                        f"App '{app.name}' is already linked to database '{database.name}' as {link.env_name} (link {link.id}).",
                        code="link-conflict",
                    )
            if any(v.name == name for v in env.list(app.id)):
                raise Conflict(
                    f"App '{app.name}' already has an env var named {name}; remove it "
                    f"(DELETE /v1/apps/{app.name}/env/{name}) or pick another env_name.",
                    code="env-name-taken",
                )
            link_id = new_id("lnk")
            links.add(id=link_id, app_id=app.id, database_id=database.id, env_name=name)
            env.bump_env_version(app.id)
            return links.get(app.id, link_id)  # type: ignore[return-value]

    def list(self, tenant_id: str, app_ref: str) -> list[Link]:
        with self.db.read() as session:
            app = EnvVarRepository(session, tenant_id).app(app_ref)
            if app is None:
                raise NotFound.of("app", app_ref)
            return LinkRepository(session, tenant_id).for_app(app.id)

    def delete(self, tenant_id: str, app_ref: str, link_id: str) -> None:
        with self.db.write() as session:
            env = EnvVarRepository(session, tenant_id)
            app = env.app(app_ref)
            if app is None:
                raise NotFound.of("app", app_ref)
            links = LinkRepository(session, tenant_id)
            if links.get(app.id, link_id) is None:
                raise NotFound.of("link", link_id)
            links.remove(link_id)
            env.bump_env_version(app.id)

    def current(self, tenant_id: str, app_id: str) -> tuple[ConfigLink, ...]:
        """The app's links as a release keeps them: by database id, never a URL or password."""
        with self.db.read() as session:
            return tuple(
                ConfigLink(link.env_name, link.database_id) for link in LinkRepository(session, tenant_id).for_app(app_id)
            )

    def resolve_config(self, tenant_id: str, links: tuple[ConfigLink, ...]) -> dict[str, str]:
        """``{env_name: url}`` for the links a release was made with. ``LinkedDatabaseGone`` when
        one of those databases no longer exists (or is being deleted)."""
        with self.db.read() as session:
            repo = DatabaseRepository(session, tenant_id)
            databases = {link.env_name: (link.database_id, repo.get(link.database_id)) for link in links}
        urls = {}
        for env_name, (database_id, database) in databases.items():
            if database is None or database.status in (Status.DELETING, Status.DELETED):
                raise LinkedDatabaseGone(env_name, database_id)
            urls[env_name] = connection_url(self.keyring, database)
        return urls

    def resolve(self, tenant_id: str, app_id: str) -> dict[str, str]:
        """``{env_name: url}`` for a container start, in memory only. An unreadable password
        fails the whole call (``CredentialsUnreadable``): never start an app half-configured."""
        with self.db.read() as session:
            links = LinkRepository(session, tenant_id).for_app(app_id)
            repo = DatabaseRepository(session, tenant_id)
            databases = {link.env_name: repo.get(link.database_id) for link in links}
        return {name: connection_url(self.keyring, database) for name, database in databases.items() if database is not None}
