from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.domain.records import App, Page
from control.store.models import AppRow, DeploymentRow
from control.store.repositories.paging import paginate


def to_app(row: AppRow) -> App:
    return App(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        description=row.description,
        port=row.port,
        health_check_path=row.health_check_path,
        builder=row.builder,
        created_at=row.created_at,
        updated_at=row.updated_at,
        replicas=row.replicas,
    )


class AppRepository:
    """Every query is scoped to one tenant: there is no way to ask for another's app."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _row(self, ref: str) -> AppRow | None:
        # Apps are addressed by id or by name; both only within the tenant.
        column = AppRow.id if ref.startswith("app_") else AppRow.name
        query = select(AppRow).where(AppRow.tenant_id == self.tenant_id, column == ref)
        return self.session.scalar(query)

    def get(self, ref: str) -> App | None:
        row = self._row(ref)
        return None if row is None else to_app(row)

    def name_taken(self, name: str) -> bool:
        return self._row(name) is not None

    def add(self, *, id: str, name: str, **fields: Any) -> App:
        row = AppRow(id=id, tenant_id=self.tenant_id, name=name, **fields)
        self.session.add(row)
        self.session.flush()
        return to_app(row)

    def list(self, *, limit: int, cursor: str | None) -> Page[App]:
        query = select(AppRow).where(AppRow.tenant_id == self.tenant_id)
        return paginate(self.session, query, AppRow.id, to_app, limit=limit, cursor=cursor)

    def update(self, ref: str, **fields: Any) -> App | None:
        row = self._row(ref)
        if row is None:
            return None
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.flush()
        return to_app(row)

    def deployment_ids(self, app_id: str) -> builtins.list[str]:
        query = select(DeploymentRow.id).where(DeploymentRow.app_id == app_id, DeploymentRow.tenant_id == self.tenant_id)
        return list(self.session.scalars(query))

    def delete(self, ref: str) -> App | None:
        row = self._row(ref)
        if row is None:
            return None
        record = to_app(row)
        self.session.delete(row)
        self.session.flush()
        return record
