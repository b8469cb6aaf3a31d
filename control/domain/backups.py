"""Backups of managed databases and restores from them: requests, state, retention.

Files live under ``<data_dir>/backups/<tenant id>/<database id>/``; the SHA-256 recorded in
the database row (not only the file's sidecar, which could be rewritten together with the
file) is what a restore checks before it touches anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog

from control.clock import utcnow
from control.domain.databases import DatabaseService, Status
from control.domain.errors import Conflict, NotFound
from control.domain.records import Backup, Database, Page, Restore
from control.ids import new_id
from control.store.repositories.backups import BackupRepository
from control.store.repositories.databases import DatabaseRepository

log = structlog.get_logger("moorage.backups")

BACKUP_JOB = "database.backup"
RESTORE_JOB = "database.restore"
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


class BackupService:
    def __init__(self, databases: DatabaseService, *, default_retention: int) -> None:
        self.databases = databases
        self.db = databases.db
        self.queue = databases.queue
        self.default_retention = default_retention

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
            backup = BackupRepository(session, tenant_id).add(
                id=new_id("bak"), tenant_id=tenant_id, database_id=database.id, engine=database.engine, status=PENDING
            )
            self.queue.enqueue(BACKUP_JOB, backup.id, tenant_id=tenant_id, max_attempts=self.databases.config.max_attempts)
        return backup

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
        """Keep the newest N succeeded backups of the database; remove the rest (rows and files)."""
        with self.db.write() as session:
            database = DatabaseRepository(session, None).get(database_id)
            if database is None:
                return []
            repo = BackupRepository(session, None)
            expired = repo.succeeded(database_id)[self.retention_of(database) :]
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
