"""Backups of managed databases and restores from them: requests, state, retention.

A database with a ``backup_schedule`` (cron syntax, UTC) is backed up whenever it comes round:
the scheduler thread calls ``fire_due``. Like app schedules, a due database is backed up once
and its next time is counted *from now*, so backups missed while the control plane was down
run at most once on its return; a firing while the previous backup is still pending or
running is skipped and the skip recorded on the database. Retention then keeps the newest N.

Files live under ``<data_dir>/backups/<tenant id>/<database id>/``; the SHA-256 recorded in
the database row (not only the file's sidecar, which could be rewritten together with the
file) is what a restore checks before it touches anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from control.clock import utcnow
from control.domain.databases import DatabaseService, Status
from control.domain.errors import Conflict, NotFound
from control.domain.records import Backup, Database, Page, Restore
from control.domain.schedules import fire_each, next_fire
from control.ids import new_id
from control.store.repositories.backups import BackupRepository
from control.store.repositories.databases import DatabaseRepository
from control.store.repositories.tenants import TenantRepository

log = structlog.get_logger("moorage.backups")

BACKUP_JOB = "database.backup"
RESTORE_JOB = "database.restore"
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
MANUAL, SCHEDULE = "manual", "schedule"


@dataclass(frozen=True)
class BackupFiring:
    database_id: str
    name: str
    backup_id: str | None  # None: skipped
    skipped: str | None = None  # why


class BackupService:
    def __init__(self, databases: DatabaseService, *, default_retention: int, clock: Callable[[], datetime] = utcnow) -> None:
        self.databases = databases
        self.db = databases.db
        self.queue = databases.queue
        self.default_retention = default_retention
        self.clock = clock

    def _available(self, database: Database, what: str) -> None:
        if database.status != Status.AVAILABLE:
            raise Conflict(
                f"Database '{database.name}' is {database.status}; {what} needs it 'available'. "
                "Poll GET /v1/databases/{db} and retry.",
                code="database-not-available",
            )

    # -- backups ----------------------------------------------------------------------------
    def create(self, tenant_id: str, database_ref: str) -> Backup:
        database = self.databases.get(tenant_id, database_ref)
        self._available(database, "a backup")
        with self.db.write() as session:
            return self._add(BackupRepository(session, tenant_id), database, MANUAL)

    def _add(self, repo: BackupRepository, database: Database, trigger: str) -> Backup:
        backup = repo.add(
            id=new_id("bak"),
            tenant_id=database.tenant_id,
            database_id=database.id,
            engine=database.engine,
            status=PENDING,
            trigger=trigger,
        )
        self.queue.enqueue(BACKUP_JOB, backup.id, tenant_id=database.tenant_id, max_attempts=self.databases.config.max_attempts)
        return backup

    # -- schedules (the scheduler's side) -----------------------------------------------------
    def fire_due(self) -> list[BackupFiring]:
        """Back up every database whose schedule is due now, each in a transaction of its own
        (one that fails does not hold up the others); what each firing did."""
        now = self.clock()
        with self.db.read() as session:
            due = DatabaseRepository(session, None).backups_due(now)
        return fire_each(due, lambda database_id: self._fire(database_id, now), failed_event="backup_schedule_failed")

    def _fire(self, database_id: str, now: datetime) -> BackupFiring | None:
        with self.db.write() as session:
            repo = DatabaseRepository(session, None)
            row = repo.locked(database_id)
            if row is None or row.backup_schedule is None or row.next_backup_at is None or row.next_backup_at > now:
                return None  # switched off, deleted or fired by another server meanwhile
            if row.status != Status.AVAILABLE:
                return None
            row.next_backup_at = next_fire(row.backup_schedule, now)
            backups = BackupRepository(session, None)
            reason = None
            tenant = TenantRepository(session).get(row.tenant_id)
            if tenant is not None and tenant.is_suspended:
                reason = "the tenant is suspended"
            elif (unfinished := backups.unfinished(row.id)) is not None:
                reason = f"the previous backup {unfinished.id} is still {unfinished.status}"
            if reason is not None:
                row.backups_skipped, row.last_backup_skip_reason = (row.backups_skipped or 0) + 1, reason
                log.info("backup_schedule_skipped", database_id=row.id, reason=reason)
                return BackupFiring(row.id, row.name, None, reason)
            database = repo.get(row.id)
            assert database is not None  # locked above
            backup = self._add(backups, database, SCHEDULE)
        log.info("backup_schedule_fired", database_id=database_id, backup_id=backup.id)
        return BackupFiring(database_id, database.name, backup.id)

    def list(self, tenant_id: str, database_ref: str, *, limit: int, cursor: str | None) -> Page[Backup]:
        database = self.databases.get(tenant_id, database_ref)
        with self.db.read() as session:
            return BackupRepository(session, tenant_id).list(database.id, limit=limit, cursor=cursor)

    def get(self, tenant_id: str, database_ref: str, backup_id: str) -> Backup:
        database = self.databases.get(tenant_id, database_ref)
        with self.db.read() as session:
            backup = BackupRepository(session, tenant_id).get(backup_id, database.id)
        if backup is None:
            raise NotFound.of("backup", backup_id)
        return backup

    def file(self, tenant_id: str, database_ref: str, backup_id: str) -> tuple[Backup, Path]:
        backup = self.get(tenant_id, database_ref, backup_id)
        path = self.path_of(backup)
        if backup.status != SUCCEEDED or path is None or not path.is_file():
            raise Conflict(f"Backup {backup.id} is {backup.status}; only a finished backup has a file.", code="backup-not-ready")
        return backup, path

    def path_of(self, backup: Backup) -> Path | None:
        if not backup.file_name:
            return None
        return self.databases.backup_root / backup.tenant_id / backup.database_id / backup.file_name

    def retention_of(self, database: Database) -> int:
        return database.backup_retention or self.default_retention

    # -- restores ---------------------------------------------------------------------------
    def restore(self, tenant_id: str, database_ref: str, backup_id: str, target_ref: str | None) -> Restore:
        backup = self.get(tenant_id, database_ref, backup_id)
        if backup.status != SUCCEEDED:
            raise Conflict(
                f"Backup {backup.id} is {backup.status}; only a finished backup can be restored.", code="backup-not-ready"
            )
        target = self.databases.get(tenant_id, target_ref or backup.database_id)  # another tenant's: 404
        if target.engine != backup.engine:
            raise Conflict(
                f"Backup {backup.id} is a {backup.engine} backup; database '{target.name}' runs {target.engine}. "
                "Restore into a database of the same engine.",
                code="engine-mismatch",
            )
        self._available(target, "a restore")
        with self.db.write() as session:
            restore = BackupRepository(session, tenant_id).add_restore(
                id=new_id("rst"), tenant_id=tenant_id, backup_id=backup.id, target_id=target.id, status=PENDING
            )
            self.queue.enqueue(RESTORE_JOB, restore.id, tenant_id=tenant_id, max_attempts=1)  # never twice
        return restore

    def get_restore(self, tenant_id: str, database_ref: str, backup_id: str, restore_id: str) -> Restore:
        backup = self.get(tenant_id, database_ref, backup_id)
        with self.db.read() as session:
            restore = BackupRepository(session, tenant_id).get_restore(restore_id, backup.id)
        if restore is None:
            raise NotFound.of("restore", restore_id)
        return restore

    # -- for jobs (platform-internal) ------------------------------------------------------------
    def load(self, backup_id: str) -> Backup | None:
        with self.db.read() as session:
            return BackupRepository(session, None).get(backup_id)

    def load_restore(self, restore_id: str) -> Restore | None:
        with self.db.read() as session:
            return BackupRepository(session, None).get_restore(restore_id)

    def mark(self, backup_id: str, status: str, *, reason: str | None = None, **fields: object) -> None:
        with self.db.write() as session:
            row = BackupRepository(session, None).row(backup_id)
            if row is None:
                return
            row.status, row.reason = status, reason
            if status in (SUCCEEDED, FAILED):
                row.finished_at = utcnow()
            for name, value in fields.items():
                setattr(row, name, value)

    def mark_restore(self, restore_id: str, status: str, *, reason: str | None = None) -> None:
        with self.db.write() as session:
            row = BackupRepository(session, None).restore_row(restore_id)
            if row is None:
                return
            row.status, row.reason = status, reason
            if status in (SUCCEEDED, FAILED):
                row.finished_at = utcnow()

    def enforce_retention(self, database_id: str) -> Sequence[str]:
        """Keep the newest N succeeded backups of the database and remove the rest (rows and
        files); of the failed ones (rows only, they have no file) keep the newest N too, so a
        schedule that keeps failing does not grow the history without bound."""
        with self.db.write() as session:
            database = DatabaseRepository(session, None).get(database_id)
            if database is None:
                return []
            repo = BackupRepository(session, None)
            kept = self.retention_of(database)
            expired = [*repo.succeeded(database_id)[kept:], *repo.failed(database_id)[kept:]]
            for backup in expired:
                repo.delete(backup.id)
        for backup in expired:  # files after the commit: a listed backup always has its file
            path = self.path_of(backup)
            if path is not None:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        if expired:
            log.info("backups_expired", database_id=database_id, removed=[b.id for b in expired])
        return [b.id for b in expired]

    def remove_files(self, database: Database) -> None:
        """Purge: every backup file of the database (the rows go with the database row)."""
        shutil.rmtree(self.databases.backup_dir(database), ignore_errors=True)
