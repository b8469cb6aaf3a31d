"""Environments (sandboxes): rows in, immutable records out; every query scoped to one
tenant, except for the platform's own callers (the reconciler's sweep: ``tenant_id=None``)."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.domain.records import Environment, Page
from control.store.models import EnvironmentRow
from control.store.repositories.paging import SelectT, paginate


def to_environment(row: EnvironmentRow) -> Environment:
    return Environment(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        image=row.image,
        release_id=row.release_id,
        with_app_env=bool(row.with_app_env),
        status=row.status,
        container_id=row.container_id,
        millicpus=row.millicpus,
        memory_mb=row.memory_mb,
        lease_expires_at=row.lease_expires_at,
        lifetime_ends_at=row.lifetime_ends_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class EnvironmentRepository:
    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(EnvironmentRow.tenant_id == self.tenant_id)

    def row(self, environment_id: str) -> EnvironmentRow | None:
        return self.session.scalar(self._scoped(select(EnvironmentRow).where(EnvironmentRow.id == environment_id)))

    def get(self, environment_id: str) -> Environment | None:
        row = self.row(environment_id)
        return None if row is None else to_environment(row)

    def add(self, row: EnvironmentRow) -> Environment:
        self.session.add(row)
        self.session.flush()
        return to_environment(row)

    def list(self, *, limit: int, cursor: str | None) -> Page[Environment]:
        return paginate(
            self.session, self._scoped(select(EnvironmentRow)), EnvironmentRow.id, to_environment, limit=limit, cursor=cursor
        )

    def usage(self) -> tuple[int, int, int]:
        """(environments, millicpus, memory MiB) the tenant holds now."""
        query = self._scoped(
            select(
                func.count(),
                func.coalesce(func.sum(EnvironmentRow.millicpus), 0),
                func.coalesce(func.sum(EnvironmentRow.memory_mb), 0),
            )
        )
        count, cpu, memory = self.session.execute(query).one()
        return int(count), int(cpu), int(memory)

    def expired(self, now: datetime) -> builtins.list[Environment]:
        query = self._scoped(select(EnvironmentRow).where(EnvironmentRow.lease_expires_at <= now))
        return [to_environment(row) for row in self.session.scalars(query.order_by(EnvironmentRow.lease_expires_at))]

    def starting_since(self, before: datetime) -> builtins.list[Environment]:
        query = self._scoped(
            select(EnvironmentRow).where(EnvironmentRow.status == "starting", EnvironmentRow.created_at <= before)
        )
        return [to_environment(row) for row in self.session.scalars(query)]

    def ids(self, environment_ids: builtins.list[str]) -> set[str]:
        return set(self.session.scalars(select(EnvironmentRow.id).where(EnvironmentRow.id.in_(environment_ids))))

    def remove(self, environment_id: str) -> bool:
        row = self.row(environment_id)
        if row is None:
            return False
        self.session.delete(row)
        self.session.flush()
        return True
