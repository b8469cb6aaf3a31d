"""The managed-database jobs on the durable queue: provision, backup, restore, delete; and the
sweep that purges volumes whose grace period is over.

Every container goes through ``runtime.databases`` (so through the sandbox, the engine's
limits and the tenant's network). Credentials are opened in memory per job and handed to
the runtime, which never logs them; reasons recorded here come from runtime errors that are
already redacted. A dependency that is down (circuit open) retries the job later.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import docker.errors
import structlog

from control.domain.backups import (
    BACKUP_JOB,
    FAILED,
    RESTORE_JOB,
    RUNNING,
    SUCCEEDED,
    BackupService,
)
from control.domain.databases import (
    DELETE_JOB,
    PROVISION_JOB,
    CredentialsUnreadable,
    DatabaseService,
    Status,
)
from control.domain.records import Database, Job
from control.domain.tenants import TenantService
from control.jobs.runtime_docker import INSTANCE_LABEL, DockerAppRuntime
from control.jobs.workers import AppLocks, JobContext, JobKind, as_outage
from runtime.databases import (
    BackupIntegrityError,
    BackupResult,
    Backups,
    DatabaseError,
    DatabaseInstance,
    Databases,
    DatabaseSpec,
)
from runtime.databases.engines import engine_facts
from runtime.databases.provision import ID_LABEL
from runtime.databases.provision import ROLE as DATABASE_ROLE
from runtime.databases.redaction import redact_text
from runtime.sandbox import SandboxPolicy

log = structlog.get_logger("moorage.jobs.databases")
MiB = 2**20


class DatabaseRuntime:
    """The runtime adapters, made on first use (so building the control plane needs no Docker)."""

    def __init__(self, app_runtime: DockerAppRuntime) -> None:
        self.app_runtime = app_runtime
        # Two jobs of a new tenant must not both create its network (Docker allows duplicate names).
        self._network_lock = threading.Lock()

    @cached_property
    def databases(self) -> Databases:
        return Databases(self.app_runtime.engine, self.app_runtime.containers)

    @cached_property
    def backups(self) -> Backups:
        return Backups(self.app_runtime.engine, self.databases)

    def network(self, tenant: str) -> str:
        with self._network_lock:
            return self.app_runtime.networks.ensure(tenant).name

    def policy(self, database: Database) -> SandboxPolicy:
        # The engine's CPU/pids floor (runsc's threads count against pids), the requested memory.
        limits = replace(engine_facts(database.engine).limits, memory_bytes=database.memory_mb * MiB)
        return replace(self.app_runtime.policy, limits=limits)


class JobFailed(Exception):
    """Ends a job as failed with ``reason`` (a user-facing sentence, no credentials)."""


@dataclass
class DatabaseJobs:
    databases: DatabaseService
    backups: BackupService
    tenants: TenantService
    runtime: DatabaseRuntime
    provision_timeout_s: float = 180.0
    sweep_interval_s: float = 3600.0
    locks: AppLocks = field(default_factory=AppLocks)  # one operation per database at a time
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def kinds(self) -> dict[str, JobKind]:
        """The job kinds this runs, for the worker pool's registry."""

        def provision_gave_up(job: Job, reason: str) -> None:
            self.databases.mark(job.subject_id, Status.FAILED, expect=(Status.PROVISIONING,), reason=f"gave up: {reason}")

        def delete_gave_up(job: Job, reason: str) -> None:  # back to a state a retried DELETE accepts
            self.databases.mark(job.subject_id, Status.FAILED, expect=(Status.DELETING,), reason=f"delete gave up: {reason}")

        def backup_gave_up(job: Job, reason: str) -> None:
            self.backups.mark(job.subject_id, FAILED, reason=f"gave up: {reason}")

        def restore_gave_up(job: Job, reason: str) -> None:
            self.backups.mark_restore(job.subject_id, FAILED, reason=f"gave up: {reason}")

        return {
            PROVISION_JOB: JobKind(self.provision, provision_gave_up),
            DELETE_JOB: JobKind(self.delete, delete_gave_up),
            BACKUP_JOB: JobKind(self.backup, backup_gave_up),
            RESTORE_JOB: JobKind(self.restore, restore_gave_up),
        }

    # -- helpers ---------------------------------------------------------------------------
    def _tenant(self, database: Database) -> str:
        return self.tenants.get(database.tenant_id).name

    def _instance(self, database: Database) -> DatabaseInstance:
        found = self.runtime.databases.find(self._tenant(database), database.id)
        if found is None:
            raise JobFailed(
                f"the container of database '{database.name}' is missing; the reconciler or a new "
                "provision must bring it back first"
            )
        return found

    @contextmanager
    def _transient(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise
            raise outage from None

    # -- provision -------------------------------------------------------------------------
    def provision(self, job: Job, ctx: JobContext) -> None:
        database = self.databases.load(job.subject_id)
        if database is None or database.status != Status.PROVISIONING:
            return
        with self.locks.hold(database.id), self._transient():
            secrets: tuple[str, ...] = ()
            try:
                creds = self.databases.credentials(database)
                secrets = creds.secrets()
                tenant = self._tenant(database)
                spec = DatabaseSpec(
                    tenant,
                    database.name,
                    database.engine,
                    self.runtime.network(tenant),
                    creds,
                    database.id,
                    labels={INSTANCE_LABEL: self.runtime.app_runtime.instance},
                )
                instance = self.runtime.databases.provision(spec, self.runtime.policy(database), timeout=self.provision_timeout_s)
            except (DatabaseError, CredentialsUnreadable, docker.errors.APIError) as exc:
                # Runtime errors are redacted already; Docker's own are masked here to be sure.
                reason = redact_text(_reason(exc), secrets)
                self.databases.mark(database.id, Status.FAILED, expect=(Status.PROVISIONING,), reason=reason)
                log.warning("database_failed", database_id=database.id, reason=reason)
                return
            if self.databases.mark(
                database.id, Status.AVAILABLE, expect=(Status.PROVISIONING,), container_id=instance.container_id
            ):
                log.info("database_available", database_id=database.id, engine=database.engine)

    # -- backup ----------------------------------------------------------------------------
    def backup(self, job: Job, ctx: JobContext) -> None:
        backup = self.backups.load(job.subject_id)
        database = self.databases.load(backup.database_id) if backup else None
        if backup is None or database is None or backup.status in (SUCCEEDED, FAILED):
            return
        with self.locks.hold(database.id), self._transient():
            self.backups.mark(backup.id, RUNNING)
            try:
                if database.status != Status.AVAILABLE:
                    raise JobFailed(f"database '{database.name}' is {database.status}")
                result = self.runtime.backups.backup(
                    self._instance(database),
                    self.databases.credentials(database),
                    self.databases.backup_dir(database),
                    stem=backup.id,
                )
            except (JobFailed, DatabaseError, CredentialsUnreadable, OSError) as exc:
                self.backups.mark(backup.id, FAILED, reason=_reason(exc))
            else:
                self.backups.mark(backup.id, SUCCEEDED, file_name=result.path.name, size=result.size, sha256=result.sha256)
        self.backups.enforce_retention(database.id)

    # -- restore ---------------------------------------------------------------------------
    def restore(self, job: Job, ctx: JobContext) -> None:
        restore = self.backups.load_restore(job.subject_id)
        if restore is None or restore.status in (SUCCEEDED, FAILED):
            return
        backup, target = self.backups.load(restore.backup_id), self.databases.load(restore.target_id)
        with self._transient():
            try:
                if backup is None or target is None:
                    raise JobFailed("the backup or the target database no longer exists")
                with self.locks.hold(target.id):
                    self.backups.mark_restore(restore.id, RUNNING)
                    path = self.backups.path_of(backup)
                    if path is None or not path.is_file():
                        raise JobFailed(f"the file of backup {backup.id} is missing; nothing was restored")
                    if target.status != Status.AVAILABLE:
                        raise JobFailed(f"database '{target.name}' is {target.status}; nothing was restored")
                    # The recorded digest, checked before the runtime touches the database.
                    self.runtime.backups.restore(
                        self._instance(target),
                        self.databases.credentials(target),
                        path,
                        expected_sha256=backup.sha256 or "",
                        timeout=self.provision_timeout_s,
                    )
            except BackupIntegrityError as exc:
                self.backups.mark_restore(
                    restore.id, FAILED, reason=f"{exc}; database '{target.name if target else '?'}' was not touched"
                )
                return
            except (JobFailed, DatabaseError, CredentialsUnreadable, OSError) as exc:
                self.backups.mark_restore(restore.id, FAILED, reason=_reason(exc))
                return
        self.backups.mark_restore(restore.id, SUCCEEDED)
        log.info("database_restored", restore_id=restore.id, backup_id=restore.backup_id, database_id=restore.target_id)

    # -- for snapshots: a dump into a given directory, a restore from a given file ------------
    def dump(self, database_id: str, dest_dir: Path, *, stem: str) -> BackupResult:
        """A backup of the database through the same runtime path as ``backup``, written to
        ``dest_dir/<stem><suffix>`` (no backup row: the caller keeps the file). ``JobFailed``,
        ``DatabaseError`` or ``CredentialsUnreadable`` when it cannot."""
        database = self.databases.load(database_id)
        if database is None:
            raise JobFailed(f"database {database_id} no longer exists")
        with self.locks.hold(database.id), self._transient():
            if database.status != Status.AVAILABLE:
                raise JobFailed(f"database '{database.name}' is {database.status}")
            return self.runtime.backups.backup(
                self._instance(database), self.databases.credentials(database), dest_dir, stem=stem
            )

    def restore_file(self, database_id: str, path: Path, *, sha256: str) -> None:
        """Restore ``path`` into the database once its digest is ``sha256`` (checked by the
        runtime before it touches anything: ``BackupIntegrityError``)."""
        database = self.databases.load(database_id)
        if database is None:
            raise JobFailed(f"database {database_id} no longer exists")
        with self.locks.hold(database.id), self._transient():
            if database.status != Status.AVAILABLE:
                raise JobFailed(f"database '{database.name}' is {database.status}; nothing was restored")
            self.runtime.backups.restore(
                self._instance(database),
                self.databases.credentials(database),
                path,
                expected_sha256=sha256,
                timeout=self.provision_timeout_s,
            )

    # -- delete and purge -------------------------------------------------------------------
    def delete(self, job: Job, ctx: JobContext) -> None:
        database = self.databases.load(job.subject_id)
        if database is None or database.status != Status.DELETING:
            return
        purge = self.databases.purge_due(database)
        with self.locks.hold(database.id), self._transient():
            tenant = self._tenant(database)
            instance = self.runtime.databases.find(tenant, database.id)
            if instance is not None:
                self.runtime.databases.remove(instance, purge_volume=purge)
            if purge:
                self._purge(database, tenant)
            else:
                self.databases.mark(database.id, Status.DELETED, expect=(Status.DELETING,))
        log.info("database_deleted", database_id=database.id, purged=purge)

    def _purge(self, database: Database, tenant: str) -> None:
        self.runtime.databases.purge_volumes(tenant, database.id)
        self.backups.remove_files(database)
        self.databases.forget(database.id)  # rows of its backups and restores go with it

    def remove_orphan_containers(self) -> list[str]:
        """Stop and remove database containers of this control plane that no live database
        accounts for (its row is gone or deleted); their volumes follow the retention rules.
        A container is this control plane's when it carries our instance label, or (made
        before that label existed) when its database id is one of ours. Returns their names."""
        instance = self.runtime.app_runtime.instance
        removed = []
        for container in self.runtime.databases.containers.find(role=DATABASE_ROLE):
            database_id = container.labels.get(ID_LABEL, "")
            row = self.databases.load(database_id) if database_id else None
            ours = container.labels.get(INSTANCE_LABEL) == instance or (
                row is not None and INSTANCE_LABEL not in container.labels
            )
            if not ours or (row is not None and row.status != Status.DELETED):
                continue
            with self.locks.try_hold(database_id or container.id) as held:
                if held:
                    self.runtime.databases.stop_and_remove(container.id)
                    removed.append(container.name)
        return removed

    def sweep(self) -> list[str]:
        """Purge every deleted database whose grace period is over; returns their ids."""
        purged = []
        for database in self.databases.expired():
            try:
                with self.locks.hold(database.id):
                    self._purge(database, self._tenant(database))
                purged.append(database.id)
            except Exception as exc:  # noqa: BLE001 (one failure must not stop the sweep; the next one retries)
                log.warning("database_purge_failed", database_id=database.id, error=f"{type(exc).__name__}: {exc}")
        if purged:
            log.info("database_volumes_purged", database_ids=purged)
        return purged

    def start(self) -> None:
        if self.sweep_interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="moorage-database-purge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.sweep_interval_s):
            self.sweep()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "detail", None) or str(exc) or type(exc).__name__
