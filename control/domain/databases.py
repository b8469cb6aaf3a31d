"""Managed databases: the rules (names, engines, quotas, the state machine, deletion with a
grace period) and the credentials, sealed at rest and opened in memory only.

Provisioning, backups and deletion run as jobs on the durable queue (``control.jobs.databases``);
this service records intent and state, never talks to Docker.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from msgspec import UNSET
from msgspec import UnsetType as Unset

from control.clock import utcnow
from control.domain.errors import Conflict, DomainError, Invalid, NotFound, QuotaExceeded
from control.domain.jobs import JobEnqueuer
from control.domain.names import check_dns_label
from control.domain.records import Database, DatabaseOverrides, Page
from control.domain.schedules import next_fire, parse_schedule, shortest_gap_s
from control.ids import new_id
from control.security.keyring import (
    KeyringError,
    ReloadingKeyring,
    UnknownMasterKey,
    owner_aad,
)
from control.store.database import Store
from control.store.repositories.apps import AppRepository
from control.store.repositories.databases import (
    DatabaseLimitsRepository,
    DatabaseRepository,
)
from control.store.repositories.env_vars import EnvVarRepository
from control.store.repositories.links import LinkRepository
from control.store.repositories.tenants import TenantRepository
from runtime.databases.engines import POSTGRES, REDIS, Credentials, engine_facts
from runtime.databases.provision import hostname_for

log = structlog.get_logger("moorage.databases")

ENGINES = (POSTGRES, REDIS)
PROVISION_JOB = "database.provision"
DELETE_JOB = "database.delete"
# Container memory when the request names none (Postgres needs more than Redis to be useful).
DEFAULT_MEMORY_MB = {POSTGRES: 512, REDIS: 256}
MIN_MEMORY_MB, MAX_MEMORY_MB = 64, 65536
MAX_RETENTION = 100
MAX_NAME_CHARS = 60  # the in-network hostname `db-<name>` must stay a 63-character DNS label
# What uses the host: a failed database has no container, a deleted one only a volume.
QUOTA_STATUSES = ("provisioning", "available", "deleting")


class Status:
    PROVISIONING = "provisioning"
    AVAILABLE = "available"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


@dataclass(frozen=True)
class DatabaseConfig:
    max_databases: int = 5
    max_memory_mb: int = 2048
    backup_retention: int = 7
    backup_min_interval_s: int = 300  # a backup schedule may come round at most this often
    volume_grace: timedelta = timedelta(days=7)
    max_attempts: int = 2


@dataclass(frozen=True)
class DatabaseLimits:
    max_databases: int
    max_memory_mb: int
    overrides: DatabaseOverrides


class CredentialsUnreadable(DomainError):
    """The sealed password cannot be opened (a master key is missing, or the blob was altered)."""

    title = "Stored credentials cannot be decrypted"

    def __init__(self, database: Database, error: KeyringError) -> None:
        self.status = 503 if isinstance(error, UnknownMasterKey) else 500  # as env's SecretUnreadable
        super().__init__(
            f"The credentials of database '{database.name}' cannot be opened ({error.reason}, master key "
            f"'{database.master_key_id}'). An operator must load that master key; report the request_id.",
            code="credentials-unreadable",
        )


def password_aad(tenant_id: str, database_id: str) -> bytes:
    """Binds the blob to its owner and field: a password copied to another row fails to open."""
    return owner_aad("database", tenant_id, database_id, "password")


def open_credentials(keyring: ReloadingKeyring, database: Database) -> Credentials:
    try:
        password = keyring.open(database.password_ciphertext, password_aad(database.tenant_id, database.id))
    except KeyringError as exc:
        log.error(
            "database_credentials_unreadable", database_id=database.id, master_key_id=database.master_key_id, reason=exc.reason
        )
        raise CredentialsUnreadable(database, exc) from None
    return Credentials(password=password, user=database.db_user, database=database.db_name)


def connection_url(keyring: ReloadingKeyring, database: Database) -> str:
    """The in-network URL an app on the tenant's network uses (contains the password)."""
    return engine_facts(database.engine).url(hostname_for(database.name), open_credentials(keyring, database))


def _check_request(name: str, engine: str, memory_mb: int | None, retention: int | None) -> None:
    check_dns_label("name", name)
    errors = []
    if len(name) > MAX_NAME_CHARS:
        errors.append({"field": "name", "message": f"at most {MAX_NAME_CHARS} characters (the hostname is db-<name>)"})
    if engine not in ENGINES:
        errors.append({"field": "engine", "message": f"one of {list(ENGINES)}"})
    if memory_mb is not None and not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        errors.append({"field": "memory_mb", "message": f"between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}"})
    if retention is not None and not 1 <= retention <= MAX_RETENTION:
        errors.append({"field": "backup_retention", "message": f"between 1 and {MAX_RETENTION}"})
    if errors:
        raise Invalid(
            "Invalid database request (" + ", ".join(e["field"] for e in errors) + "); nothing was created.", errors=errors
        )


class DatabaseService:
    def __init__(self, db: Store, keyring: ReloadingKeyring, queue: JobEnqueuer, config: DatabaseConfig, data_dir: Path) -> None:
        self.db = db
        self.keyring = keyring
        self.queue = queue
        self.config = config
        self.backup_root = data_dir / "backups"

    # -- quotas ---------------------------------------------------------------------------
    def limits(self, tenant_id: str) -> DatabaseLimits:
        with self.db.read() as session:
            overrides = DatabaseLimitsRepository(session).get(tenant_id)
        return self._effective(overrides)

    def _effective(self, overrides: DatabaseOverrides) -> DatabaseLimits:
        return DatabaseLimits(
            max_databases=self.config.max_databases if overrides.max_databases is None else overrides.max_databases,
            max_memory_mb=self.config.max_memory_mb if overrides.max_memory_mb is None else overrides.max_memory_mb,
            overrides=overrides,
        )

    def set_limits(self, tenant_id: str, overrides: DatabaseOverrides) -> DatabaseLimits:
        check_overrides(overrides)
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            return self._effective(DatabaseLimitsRepository(session).set(tenant_id, overrides))

    def _check_quota(self, repo: DatabaseRepository, limits: DatabaseLimits, memory_mb: int) -> None:
        using, total_mb = repo.usage(QUOTA_STATUSES)
        names = ", ".join(f"{n} ({mb} MiB)" for n, mb in using) or "none"
        if len(using) + 1 > limits.max_databases:
            raise QuotaExceeded(
                f"Quota exceeded: this tenant may run {limits.max_databases} database(s) and has {len(using)} ({names}). "
                "Delete one with DELETE /v1/databases/{name}, or ask an operator to raise the limit.",
            )
        if total_mb + memory_mb > limits.max_memory_mb:
            raise QuotaExceeded(
                f"Quota exceeded: {memory_mb} MiB more would make {total_mb + memory_mb} MiB of database memory; the limit "
                f"is {limits.max_memory_mb} MiB (in use: {names}). Ask for less memory_mb, delete a database, "
                "or ask an operator to raise the limit.",
            )

    # -- lifecycle ------------------------------------------------------------------------
    def create(
        self,
        tenant_id: str,
        name: str,
        engine: str,
        *,
        memory_mb: int | None = None,
        backup_retention: int | None = None,
        backup_schedule: str | None = None,
    ) -> Database:
        _check_request(name, engine, memory_mb, backup_retention)
        schedule = None if backup_schedule is None else self.check_backup_schedule(backup_schedule)
        memory = memory_mb or DEFAULT_MEMORY_MB[engine]
        database_id = new_id("db")
        # Only URL-safe characters: the password goes into a URL unquoted by most clients' eyes.
        sealed = self.keyring.seal(secrets.token_urlsafe(24), password_aad(tenant_id, database_id))
        with self.db.write() as session:  # one write transaction: the quota check and the insert are atomic
            repo = DatabaseRepository(session, tenant_id)
            taken = repo.get(name)
            if taken is not None:
                raise Conflict(self._name_taken(taken), code="name-taken")
            if AppRepository(session, tenant_id, previews=True).get(hostname_for(name)) is not None:
                raise Conflict(
                    f"An app named '{hostname_for(name)}' holds the hostname this database would get; pick another name.",
                    code="name-taken",
                )
            limits = self._effective(DatabaseLimitsRepository(session).get(tenant_id))
            self._check_quota(repo, limits, memory)
            created = repo.add(
                id=database_id,
                name=name,
                engine=engine,
                status=Status.PROVISIONING,
                memory_mb=memory,
                backup_retention=backup_retention,
                backup_schedule=schedule,
                next_backup_at=None if schedule is None else next_fire(schedule, utcnow()),
                db_user="app",
                db_name="app" if engine == POSTGRES else "0",
                password_ciphertext=sealed.blob,
                master_key_id=sealed.key_id,
            )
            self.queue.enqueue(PROVISION_JOB, database_id, tenant_id=tenant_id, max_attempts=self.config.max_attempts)
        log.info("database_requested", database_id=database_id, engine=engine, memory_mb=memory)
        return created

    @staticmethod
    def _name_taken(taken: Database) -> str:
        if taken.status == Status.DELETED and taken.purge_after is not None:
            return (
                f"A deleted database named '{taken.name}' keeps its volume until {taken.purge_after.isoformat()}. "
                f"Free the name now with DELETE /v1/databases/{taken.name}?purge=true, or pick another name."
            )
        return f"A database named '{taken.name}' already exists; pick another name."

    def check_backup_schedule(self, schedule: str) -> str:
        """The schedule normalised; 422 when croniter cannot read it or it comes round more
        often than the operator allows (each backup is a dump of the whole database)."""
        text = parse_schedule(schedule, "backup_schedule")
        floor = self.config.backup_min_interval_s
        gap = shortest_gap_s(text, after=utcnow())
        if gap < floor:
            raise Invalid(
                f"'backup_schedule' {text!r} comes round every {gap:g} s; backups may run at most every {floor} s "
                "on this platform (MOORAGE_DATABASE_BACKUP_MIN_INTERVAL_S). Pick a slower schedule, such as '0 3 * * *'.",
                errors=[{"field": "backup_schedule", "message": f"at most one backup every {floor} s"}],
            )
        return text

    def update(
        self,
        tenant_id: str,
        ref: str,
        *,
        backup_schedule: str | Unset | None = UNSET,
        backup_retention: int | Unset | None = UNSET,
    ) -> Database:
        """Change how the database is backed up; a field left ``UNSET`` stays as it is, ``None``
        switches the schedule off or returns retention to the platform default. A new
        schedule counts its next backup from now; a new retention applies from the next backup."""
        if (
            not isinstance(backup_retention, Unset)
            and backup_retention is not None
            and not 1 <= backup_retention <= MAX_RETENTION
        ):
            raise Invalid(
                f"'backup_retention' must be between 1 and {MAX_RETENTION}; nothing was changed.",
                errors=[{"field": "backup_retention", "message": f"between 1 and {MAX_RETENTION}"}],
            )
        schedule = backup_schedule
        if isinstance(schedule, str):
            schedule = self.check_backup_schedule(schedule)
        with self.db.write() as session:
            repo = DatabaseRepository(session, tenant_id)
            row = repo.row(ref)
            if row is None:
                raise NotFound.of("database", ref)
            if row.status in (Status.DELETING, Status.DELETED):
                raise Conflict(f"Database '{row.name}' is {row.status}; it can no longer be changed.", code="database-deleted")
            if not isinstance(schedule, Unset):
                if schedule != row.backup_schedule:
                    row.next_backup_at = None if schedule is None else next_fire(schedule, utcnow())
                row.backup_schedule = schedule
            if not isinstance(backup_retention, Unset):
                row.backup_retention = backup_retention
            session.flush()
            return repo.get(row.id)  # type: ignore[return-value]

    def get(self, tenant_id: str, ref: str) -> Database:
        with self.db.read() as session:
            found = DatabaseRepository(session, tenant_id).get(ref)
        if found is None:
            raise NotFound.of("database", ref)
        return found

    def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[Database]:
        with self.db.read() as session:
            return DatabaseRepository(session, tenant_id).list(limit=limit, cursor=cursor)

    def connection(self, tenant_id: str, ref: str) -> tuple[Database, str]:
        database = self.get(tenant_id, ref)
        if database.status in (Status.DELETING, Status.DELETED):
            raise Conflict(f"Database '{database.name}' is {database.status}; it has no connection.", code="database-deleted")
        return database, connection_url(self.keyring, database)

    def delete(self, tenant_id: str, ref: str, *, purge: bool = False, force: bool = False) -> Database:
        """Stop and remove the container (a job). The volume stays for the grace period unless
        ``purge``; a linked database needs ``force`` (which removes its links too)."""
        now = utcnow()
        with self.db.write() as session:
            repo = DatabaseRepository(session, tenant_id)
            row = repo.row(ref)
            if row is None:
                raise NotFound.of("database", ref)
            if row.status == Status.DELETING:
                raise Conflict(f"Database '{row.name}' is already being deleted.", code="database-deleting")
            if row.status == Status.DELETED and not purge:
                raise Conflict(
                    f"Database '{row.name}' is already deleted; its volume is kept until "
                    f"{row.purge_after.isoformat() if row.purge_after else 'purged'}. Add ?purge=true to remove it now.",
                    code="database-deleted",
                )
            links = LinkRepository(session, tenant_id)
            linked = links.for_database(row.id)
            if linked and not force:
                names = ", ".join(f"{lk.app_name} ({lk.env_name}, link {lk.id})" for lk in linked)
                raise Conflict(
                    f"Database '{row.name}' is linked to app(s) {names}. Remove the links with "
                    "DELETE /v1/apps/{app}/links/{link}, or delete with ?force=true to remove them too "
                    "(the apps keep the old URL until their next release).",
                    code="database-linked",
                )
            env = EnvVarRepository(session, tenant_id)
            for link in linked:  # force: the apps' next release drops the variable
                links.remove(link.id)
                env.bump_env_version(link.app_id)
            row.status, row.reason = Status.DELETING, None
            row.deleted_at = row.deleted_at or now
            # The delete job reads the intent from here: due now = purge now.
            row.purge_after = now if purge else now + self.config.volume_grace
            session.flush()
            self.queue.enqueue(DELETE_JOB, row.id, tenant_id=tenant_id, max_attempts=self.config.max_attempts)
            return repo.get(row.id)  # type: ignore[return-value]

    # -- for jobs (platform-internal: no tenant scope) ---------------------------------------
    def load(self, database_id: str) -> Database | None:
        with self.db.read() as session:
            return DatabaseRepository(session, None).get(database_id)

    def credentials(self, database: Database) -> Credentials:
        return open_credentials(self.keyring, database)

    def mark(
        self,
        database_id: str,
        status: str,
        *,
        expect: tuple[str, ...],
        reason: str | None = None,
        container_id: str | None = None,
    ) -> bool:
        """Move to ``status`` only from one of ``expect``: a delete requested meanwhile wins."""
        with self.db.write() as session:
            row = DatabaseRepository(session, None).row(database_id)
            if row is None or row.status not in expect:
                return False
            row.status, row.reason = status, reason
            if container_id is not None:
                row.container_id = container_id
            return True

    def purge_due(self, database: Database, now: datetime | None = None) -> bool:
        return database.purge_after is not None and database.purge_after <= (now or utcnow())

    def expired(self, now: datetime | None = None) -> Sequence[Database]:
        """Deleted databases whose grace period is over: their volume and backups go."""
        with self.db.read() as session:
            return DatabaseRepository(session, None).expired(now or utcnow())

    def forget(self, database_id: str) -> None:
        with self.db.write() as session:
            DatabaseRepository(session, None).delete(database_id)

    def backup_dir(self, database: Database) -> Path:
        return self.backup_root / database.tenant_id / database.id


def check_overrides(overrides: DatabaseOverrides) -> None:
    bad = [
        f
        for f, v in (("max_databases", overrides.max_databases), ("max_memory_mb", overrides.max_memory_mb))
        if v is not None and v < 0
    ]
    if bad:
        raise Invalid("Limits cannot be negative.", errors=[{"field": f, "message": "0 or more"} for f in bad])
