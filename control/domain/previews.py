"""Preview deployments: a short-lived copy of an app, built from another source (a git ref
or an upload), served at a host of its own, and deleted at its TTL or by ``DELETE``.

A preview is an app row of its own kind (``kind = "preview"``, ``parent_app_id``,
``expires_at``) named ``<app>--<slug>`` (slug: 6 random ``[a-z0-9]``, drawn again should it
collide), so the deploy pipeline, the route, the reconciler and teardown serve it as they
serve any app, and its host is ``<app>--<slug>.<tenant>.<base-domain>``. What a tenant asks
of its apps never finds one (``AppRepository`` leaves previews out unless asked): it is not
in ``GET /v1/apps``, and the app endpoints answer 404 for it, except the read-only views of
its deployments and logs.

From its app it gets the port, the health check path and the builder, and the env vars:
each opened and sealed again under the preview's own binding (tenant, preview, name; a
ciphertext is never copied), with the request's overrides applied (``null`` removes one).
It never gets the app's volumes, database links or custom domains, and runs 1 replica. It
never writes to its app: the app's release, route, volumes, env and databases stay as they
are. Deleting the app deletes its previews (``AppService.delete``).

A preview is an app for the compute quotas (``max_apps``; replicas, CPU and memory once its
deploy is accepted), and its containers are metered as any app's. Each app has at most
``max_per_app`` previews at once.

``snapshot``: a preview with databases of its own, forked from a snapshot of the app, goes
through ``SnapshotDatabases`` (the snapshots part's domain function), called in the create
transaction once the preview's row and env exist and before its deployment is queued.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from control.clock import utcnow
from control.domain.apps import PREVIEW_SEPARATOR, AppService
from control.domain.audit import AuditService
from control.domain.databases import DatabaseService
from control.domain.deployments import DeploymentService
from control.domain.env import EnvService, EnvValue, check_vars
from control.domain.errors import Conflict, Invalid, NotFound, QuotaExceeded
from control.domain.names import DNS_LABEL
from control.domain.records import App, Deployment
from control.domain.snapshots import FAILED as SNAPSHOT_FAILED
from control.domain.snapshots import SnapshotService
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import PREVIEW, AppRepository, expired_previews
from control.store.repositories.deployments import latest_deployments
from control.store.repositories.links import LinkRepository

SLUG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SLUG_LENGTH = 6
MAX_NAME = 63  # a DNS label: the preview's name is the first label of its host
MAX_PARENT_NAME = MAX_NAME - len(PREVIEW_SEPARATOR) - SLUG_LENGTH
SLUG_DRAWS = 20  # 36**6 names per app: a collision drawn 20 times running means something else is wrong
EXPIRED_ACTION = "DELETE /v1/apps/{app}/previews/{preview} (ttl_s ran out)"
log = structlog.get_logger("moorage.previews")


class SnapshotDatabases(Protocol):
    """The ``snapshot`` seam, implemented by the snapshots part and passed to ``PreviewService``."""

    def fork_databases(self, tenant_id: str, snapshot_id: str, app_id: str) -> None:
        """Give ``app_id`` (a new preview, its row and env written) databases of its own, forked
        from snapshot ``snapshot_id`` of the same tenant: new databases of the snapshot's
        engines, new credentials, restored from its dumps, linked under the same env names.
        Runs in the preview's create transaction, before its deployment is queued; raises a
        ``DomainError`` (``NotFound`` for an unknown snapshot) to refuse, and nothing is made."""

    def drop_databases(self, tenant_id: str, app_id: str) -> None:
        """The databases ``fork_databases`` made for ``app_id``, deleted with the preview (by
        DELETE, at its TTL, or with its app), in the preview's delete transaction, before its
        row (and so its links) is deleted. Called for every preview: one with none is a no-op."""


class SnapshotForks:
    """``SnapshotDatabases`` over the snapshots part: ``SnapshotService.fork_databases`` makes
    the preview's databases (linked under the snapshot's env names) and a job that restores
    the dumps into them; the preview's deploy waits for that job (``DeployPipeline.databases_ready``).
    Dropping deletes every database linked to the preview (a preview has no other links)
    with its volume, at once."""

    def __init__(self, snapshots: SnapshotService, databases: DatabaseService) -> None:
        self.snapshots = snapshots
        self.databases = databases

    def fork_databases(self, tenant_id: str, snapshot_id: str, app_id: str) -> None:
        self.snapshots.fork_databases(tenant_id, snapshot_id, app_id)

    def drop_databases(self, tenant_id: str, app_id: str) -> None:
        with self.snapshots.db.read() as session:
            linked = LinkRepository(session, tenant_id).for_app(app_id)
        for link in linked:
            self.databases.delete(tenant_id, link.database_id, purge=True, force=True)

    def ready(self, app_id: str) -> None:
        """For the deploy job: ``RetryLater`` while the app's databases are being forked,
        ``Failed`` once that failed, nothing otherwise."""
        fork = self.snapshots.fork_in_progress(app_id)
        if fork is None:
            return
        if fork.status == SNAPSHOT_FAILED:
            raise DatabasesUnavailable(f"its databases could not be forked from snapshot {fork.snapshot_id}: {fork.reason}")
        raise DatabasesPending(f"waiting for its databases to be restored from snapshot {fork.snapshot_id} ({fork.status})")


class DatabasesPending(Exception):
    """The app's databases are still being made: its deploy waits (the job runs again later)."""


class DatabasesUnavailable(Exception):
    """The app's databases could not be made: its deploy fails, saying why."""


@dataclass(frozen=True)
class PreviewConfig:
    ttl_default_s: int = 86400
    ttl_max_s: int = 7 * 86400
    max_per_app: int = 5


@dataclass(frozen=True, slots=True)
class Preview:
    app: App  # the preview's own app: its id, name (and so its host), expiry
    parent: App
    deployment: Deployment | None  # its newest

    @property
    def status(self) -> str:
        return self.deployment.status if self.deployment else "none"


def draw_slug(choice: Callable[[str], str] = secrets.choice) -> str:
    return "".join(choice(SLUG_ALPHABET) for _ in range(SLUG_LENGTH))


class PreviewService:
    def __init__(
        self,
        db: Store,
        apps: AppService,
        env_vars: EnvService,
        deployments: DeploymentService,
        config: PreviewConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        slugs: Callable[[], str] = draw_slug,
        snapshots: SnapshotDatabases | None = None,
        audit: AuditService | None = None,
    ) -> None:
        self.db = db
        self.apps = apps  # deletes go through the app teardown (route, containers, images)
        self.env_vars = env_vars
        self.deployments = deployments  # the preview's deploys: the one pipeline, quotas included
        self.config = config
        self.clock = clock
        self.slugs = slugs
        self.snapshots: SnapshotDatabases | None = None  # None: a request naming ``snapshot`` is refused (422)
        self.audit = audit  # an expiry is written to the tenant's audit trail
        if snapshots is not None:
            self.use_snapshots(snapshots)

    def use_snapshots(self, snapshots: SnapshotDatabases) -> None:
        """Previews with databases forked from a snapshot: ``fork_databases`` at create,
        ``drop_databases`` whenever a preview is deleted (DELETE, TTL, its app's delete)."""
        self.snapshots = snapshots
        self.apps.preview_deleted = lambda preview: snapshots.drop_databases(preview.tenant_id, preview.id)

    # -- checks before any body is read -------------------------------------------------
    def parent(self, tenant_id: str, app_ref: str) -> App:
        """The app to preview; 404 for an unknown app, and for a preview (no previews of previews)."""
        return self.deployments.app(tenant_id, app_ref)

    def ttl(self, ttl_s: int | None) -> int:
        if ttl_s is None:
            return self.config.ttl_default_s
        if not 1 <= ttl_s <= self.config.ttl_max_s:
            raise Invalid(
                f"'ttl_s' must be between 1 and {self.config.ttl_max_s} seconds (MOORAGE_PREVIEW_TTL_MAX_S); got {ttl_s}.",
                errors=[{"field": "ttl_s", "message": f"1..{self.config.ttl_max_s}"}],
            )
        return ttl_s

    def check_options(self, ttl_s: int | None, env: dict[str, str | None], snapshot: str | None) -> int:
        """The request's own fields, before its source is fetched; the TTL in seconds."""
        lifetime = self.ttl(ttl_s)
        check_vars({name: None if v is None else EnvValue(v) for name, v in env.items()}, field="env")
        if snapshot is not None and self.snapshots is None:
            raise Invalid(
                "'snapshot': this server cannot fork a snapshot's databases for a preview (the snapshots feature is "
                "not installed). Leave 'snapshot' out: the preview then has no databases of its own.",
                errors=[{"field": "snapshot", "message": "not supported by this server"}],
            )
        return lifetime

    def check_new(self, tenant_id: str, parent: App) -> None:
        """422 before an upload is read: the app's name leaves room for a slug, and it has
        fewer than ``max_per_app`` previews. ``create`` checks again as it writes."""
        with self.db.read() as session:
            self._check_room(AppRepository(session, tenant_id), parent)

    def _check_room(self, apps: AppRepository, parent: App) -> None:
        if len(parent.name) > MAX_PARENT_NAME:
            raise Invalid(
                f"App '{parent.name}' has a name of {len(parent.name)} characters: a preview is named "
                f"'<app>{PREVIEW_SEPARATOR}<6-character slug>', a DNS label of at most {MAX_NAME}, so previews need "
                f"an app name of at most {MAX_PARENT_NAME} characters.",
                errors=[{"field": "app", "message": f"at most {MAX_PARENT_NAME} characters for a preview"}],
            )
        held = apps.previews_of(parent.id)
        if len(held) >= self.config.max_per_app:
            raise QuotaExceeded(
                f"Quota exceeded (preview_max_per_app): app '{parent.name}' has {len(held)} preview(s), at most "
                f"{self.config.max_per_app} at once (MOORAGE_PREVIEW_MAX_PER_APP): "
                f"{', '.join(p.name for p in held)}. Delete one with DELETE /v1/apps/{parent.name}/previews/{{preview}}, "
                "or wait for one's TTL. Nothing was created."
            )

    # -- changes ----------------------------------------------------------------------------
    def create(
        self,
        tenant_id: str,
        parent: App,
        deployment_id: str,
        source_kind: str,
        source: dict[str, Any],
        *,
        ttl_s: int | None = None,
        env: dict[str, str | None] | None = None,
        snapshot: str | None = None,
    ) -> Preview:
        """The preview, its env and its first deployment (queued), in one unit of work:
        every check (quotas included) passes, or nothing is made."""
        lifetime = self.check_options(ttl_s, env or {}, snapshot)
        with self.db.write() as session:
            apps = AppRepository(session, tenant_id)
            current = apps.get(parent.id)  # as of this transaction: a delete at once is 404
            if current is None:
                raise NotFound.of("app", parent.name)
            self._check_room(apps, current)
            if self.deployments.quota is not None:
                self.deployments.quota.check_new_app(session, tenant_id)
            preview = apps.add(
                id=new_id("app"),
                name=self._free_name(apps, current),
                description=f"preview of {current.name}",
                port=current.port,
                health_check_path=current.health_check_path,
                builder=current.builder,
                replicas=1,
                kind=PREVIEW,
                parent_app_id=current.id,
                expires_at=self.clock() + timedelta(seconds=lifetime),
            )
            self.env_vars.copy(tenant_id, current.id, preview.id, env or {})
            if snapshot is not None and self.snapshots is not None:
                self.snapshots.fork_databases(tenant_id, snapshot, preview.id)
            deployment = self.deployments.create(tenant_id, preview, deployment_id, source_kind, source)
        log.info("preview_created", tenant_id=tenant_id, app_id=current.id, preview_id=preview.id, ttl_s=lifetime)
        return Preview(preview, current, deployment)

    def _free_name(self, apps: AppRepository, parent: App) -> str:
        for _ in range(SLUG_DRAWS):
            name = f"{parent.name}{PREVIEW_SEPARATOR}{self.slugs()}"
            if DNS_LABEL.accepts(name) and not apps.name_taken(name):
                return name
        raise Conflict(
            f"No free preview name for app '{parent.name}' after {SLUG_DRAWS} draws; retry the request.",
            code="preview-name-unavailable",
        )

    def redeploy(
        self, tenant_id: str, app_ref: str, preview_ref: str, deployment_id: str, source_kind: str, source: dict[str, Any]
    ) -> Preview:
        """A new deployment of the preview (another source); its env and expiry stay."""
        with self.db.write():
            found = self.get(tenant_id, app_ref, preview_ref)
            deployment = self.deployments.create(tenant_id, found.app, deployment_id, source_kind, source)
        return Preview(found.app, found.parent, deployment)

    def delete(self, tenant_id: str, app_ref: str, preview_ref: str) -> App:
        """The preview, torn down as an app once the delete commits (route at once, then its
        containers and images); its app is not touched."""
        with self.db.write():
            found = self.get(tenant_id, app_ref, preview_ref)
            return self.apps.delete_preview(found.app)

    def expire_due(self) -> builtins.list[str]:
        """Every preview whose TTL has run out, deleted as ``delete`` does (the reconciler's
        pass runs this: within its interval, and after a restart, since the expiry is stored)."""
        with self.db.read() as session:
            due = expired_previews(session, self.clock())
        removed = []
        for preview in due:
            try:
                with self.db.write():
                    self.apps.delete_preview(preview)
                    if self.audit is not None:
                        self.audit.record(
                            tenant_id=preview.tenant_id,
                            api_key_id=None,
                            action=EXPIRED_ACTION,
                            target=f"/v1/apps/{preview.parent_app_id}/previews/{preview.id}",
                            request_id="reconciler",
                            outcome=204,
                        )
            except NotFound:
                continue  # deleted meanwhile
            removed.append(f"preview {preview.name} ({preview.id}): its ttl_s ran out")
            log.info("preview_expired", tenant_id=preview.tenant_id, preview_id=preview.id, expired_at=preview.expires_at)
        return removed

    # -- reading ------------------------------------------------------------------------------
    def get(self, tenant_id: str, app_ref: str, preview_ref: str) -> Preview:
        """By the preview's id, its name (``<app>--<slug>``) or its slug; only among ``app``'s."""
        with self.db.read() as session:
            apps = AppRepository(session, tenant_id)
            parent = apps.get(app_ref)
            if parent is None:
                raise NotFound.of("app", app_ref)
            ref = preview_ref
            if not ref.startswith("app_") and PREVIEW_SEPARATOR not in ref:
                ref = f"{parent.name}{PREVIEW_SEPARATOR}{ref}"
            preview = AppRepository(session, tenant_id, previews=True).get(ref)
            if preview is None or preview.kind != PREVIEW or preview.parent_app_id != parent.id:
                raise NotFound.of("preview", preview_ref)
            newest = latest_deployments(session, tenant_id, [preview.id])
        return Preview(preview, parent, newest.get(preview.id))

    def list(self, tenant_id: str, app_ref: str) -> builtins.list[Preview]:
        with self.db.read() as session:
            apps = AppRepository(session, tenant_id)
            parent = apps.get(app_ref)
            if parent is None:
                raise NotFound.of("app", app_ref)
            previews = apps.previews_of(parent.id)
            newest = latest_deployments(session, tenant_id, [p.id for p in previews])
        return [Preview(p, parent, newest.get(p.id)) for p in previews]
