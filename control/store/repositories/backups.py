"""Backups of managed databases and the restores made from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.domain.records import Backup, Page, Restore
from control.store.models import DatabaseBackupRow, DatabaseRestoreRow
from control.store.repositories.paging import SelectT, paginate


def to_backup(row: DatabaseBackupRow) -> Backup:
    return Backup(
        row.id,
        row.tenant_id,
        row.database_id,
        row.engine,
        row.status,
        row.trigger,
        row.reason,
        row.file_name,
        row.size,
        row.sha256,
        row.created_at,
        row.finished_at,
    )


def to_restore(row: DatabaseRestoreRow) -> Restore:
    return Restore(row.id, row.tenant_id, row.backup_id, row.target_id, row.status, row.reason, row.created_at, row.finished_at)


class BackupRepository:
    """Scoped to one tenant, or platform-wide (``tenant_id=None``) for jobs."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT, model: type[DatabaseBackupRow | DatabaseRestoreRow]) -> SelectT:
        return query if self.tenant_id is None else query.where(model.tenant_id == self.tenant_id)

    def row(self, backup_id: str, database_id: str | None = None) -> DatabaseBackupRow | None:
        query = self._scoped(select(DatabaseBackupRow).where(DatabaseBackupRow.id == backup_id), DatabaseBackupRow)
        if database_id is not None:
            query = query.where(DatabaseBackupRow.database_id == database_id)
        return self.session.scalar(query)

    def get(self, backup_id: str, database_id: str | None = None) -> Backup | None:
        row = self.row(backup_id, database_id)
        return None if row is None else to_backup(row)

    def add(self, **fields: Any) -> Backup:
        row = DatabaseBackupRow(**fields)
        self.session.add(row)
        self.session.flush()
        return to_backup(row)

    def list(self, database_id: str, *, limit: int, cursor: str | None) -> Page[Backup]:
        query = self._scoped(select(DatabaseBackupRow).where(DatabaseBackupRow.database_id == database_id), DatabaseBackupRow)
        return paginate(self.session, query, DatabaseBackupRow.id, to_backup, limit=limit, cursor=cursor)

    def succeeded(self, database_id: str) -> Sequence[Backup]:
        """Newest first (ids are time-ordered)."""
        query = select(DatabaseBackupRow).where(
            DatabaseBackupRow.database_id == database_id, DatabaseBackupRow.status == "succeeded"
        )
        return [to_backup(r) for r in self.session.scalars(query.order_by(DatabaseBackupRow.id.desc()))]

    def failed(self, database_id: str) -> Sequence[Backup]:
        """Newest first: failures have no file, but their rows are trimmed like the rest."""
        query = select(DatabaseBackupRow).where(
            DatabaseBackupRow.database_id == database_id, DatabaseBackupRow.status == "failed"
        )
        return [to_backup(r) for r in self.session.scalars(query.order_by(DatabaseBackupRow.id.desc()))]

    def unfinished(self, database_id: str) -> Backup | None:
        """The database's backup still pending or running, if any."""
        query = select(DatabaseBackupRow).where(
            DatabaseBackupRow.database_id == database_id, DatabaseBackupRow.status.in_(("pending", "running"))
        )
        row = self.session.scalar(self._scoped(query, DatabaseBackupRow).order_by(DatabaseBackupRow.id.desc()).limit(1))
        return None if row is None else to_backup(row)

    def delete(self, backup_id: str) -> None:
        row = self.row(backup_id)
        if row is not None:
            self.session.delete(row)
            self.session.flush()

    # -- restores -------------------------------------------------------------------------
    def restore_row(self, restore_id: str) -> DatabaseRestoreRow | None:
        return self.session.scalar(
            self._scoped(select(DatabaseRestoreRow).where(DatabaseRestoreRow.id == restore_id), DatabaseRestoreRow)
        )

    def get_restore(self, restore_id: str, backup_id: str | None = None) -> Restore | None:
        row = self.restore_row(restore_id)
        if row is None or (backup_id is not None and row.backup_id != backup_id):
            return None
        return to_restore(row)

    def add_restore(self, **fields: Any) -> Restore:
        row = DatabaseRestoreRow(**fields)
        self.session.add(row)
        self.session.flush()
        return to_restore(row)
