"""Managed databases as stored: the password only as a sealed blob, never plaintext."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.domain.records import Database, DatabaseOverrides, Page
from control.store.models import DatabaseRow, TenantDatabaseLimitsRow
from control.store.repositories.paging import SelectT, paginate

ID_PREFIX = "db"


def to_database(row: DatabaseRow) -> Database:
    return Database(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        engine=row.engine,
        status=row.status,
        reason=row.reason,
        memory_mb=row.memory_mb,
        backup_retention=row.backup_retention,
        backup_schedule=row.backup_schedule,
        next_backup_at=row.next_backup_at,
        backups_skipped=row.backups_skipped or 0,
        last_backup_skip_reason=row.last_backup_skip_reason,
        db_user=row.db_user,
        db_name=row.db_name,
        master_key_id=row.master_key_id,
        container_id=row.container_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
        purge_after=row.purge_after,
        password_ciphertext=row.password_ciphertext,
    )


class DatabaseRepository:
    """One tenant's databases (``tenant_id=None``: platform-internal, for jobs and sweeps)."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(DatabaseRow.tenant_id == self.tenant_id)

    def row(self, ref: str) -> DatabaseRow | None:
        # By id or by name; a name is unique only within a tenant, so names need a tenant.
        if ref.startswith(ID_PREFIX + "_"):
            return self.session.scalar(self._scoped(select(DatabaseRow).where(DatabaseRow.id == ref)))
        if self.tenant_id is None:
            return None
        return self.session.scalar(self._scoped(select(DatabaseRow).where(DatabaseRow.name == ref)))

    def get(self, ref: str) -> Database | None:
        row = self.row(ref)
        return None if row is None else to_database(row)

    def add(self, **fields: Any) -> Database:
        assert self.tenant_id is not None
        row = DatabaseRow(tenant_id=self.tenant_id, **fields)
        self.session.add(row)
        self.session.flush()
        return to_database(row)

    def list(self, *, limit: int, cursor: str | None) -> Page[Database]:
        return paginate(self.session, self._scoped(select(DatabaseRow)), DatabaseRow.id, to_database, limit=limit, cursor=cursor)

    def usage(self, statuses: tuple[str, ...]) -> tuple[Sequence[tuple[str, int]], int]:
        """(name, memory_mb) of the tenant's databases in ``statuses``, and their memory total."""
        rows = self.session.execute(
            self._scoped(select(DatabaseRow.name, DatabaseRow.memory_mb).where(DatabaseRow.status.in_(statuses))).order_by(
                DatabaseRow.memory_mb.desc()
            )
        ).all()
        items = [(str(name), int(mb)) for name, mb in rows]
        return items, sum(mb for _, mb in items)

    def expired(self, now: datetime) -> Sequence[Database]:
        query = select(DatabaseRow).where(DatabaseRow.status == "deleted", DatabaseRow.purge_after <= now)
        return [to_database(r) for r in self.session.scalars(self._scoped(query))]

    def backups_due(self, now: datetime) -> builtins.list[str]:
        """Ids of available databases whose backup schedule has come round."""
        query = select(DatabaseRow.id).where(DatabaseRow.status == "available", DatabaseRow.next_backup_at <= now)
        return builtins.list(self.session.scalars(self._scoped(query).order_by(DatabaseRow.next_backup_at)))

    def locked(self, database_id: str) -> DatabaseRow | None:
        """The row, locked to the end of the transaction where the database can (PostgreSQL):
        two servers looking at one due backup schedule fire it once."""
        return self.session.scalar(self._scoped(select(DatabaseRow).where(DatabaseRow.id == database_id)).with_for_update())

    def delete(self, database_id: str) -> None:
        row = self.row(database_id)
        if row is not None:
            self.session.delete(row)
            self.session.flush()

    def count(self) -> int:
        return int(self.session.scalar(self._scoped(select(func.count()).select_from(DatabaseRow))) or 0)


class DatabaseLimitsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> DatabaseOverrides:
        row = self.session.get(TenantDatabaseLimitsRow, tenant_id)
        return DatabaseOverrides() if row is None else DatabaseOverrides(row.max_databases, row.max_memory_mb)

    def set(self, tenant_id: str, overrides: DatabaseOverrides) -> DatabaseOverrides:
        row = self.session.get(TenantDatabaseLimitsRow, tenant_id)
        if row is None:
            row = TenantDatabaseLimitsRow(tenant_id=tenant_id)
            self.session.add(row)
        row.max_databases, row.max_memory_mb = overrides.max_databases, overrides.max_memory_mb
        self.session.flush()
        return overrides
