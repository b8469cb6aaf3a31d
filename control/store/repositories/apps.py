from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from control.domain.records import App, Page
from control.store.models import AppRow, DeploymentRow
from control.store.repositories.paging import paginate

APP = "app"
PREVIEW = "preview"


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
        kind=row.kind or APP,
        parent_app_id=row.parent_app_id,
        expires_at=row.expires_at,
    )


class AppRepository:
    """Every query is scoped to one tenant: there is no way to ask for another's app.

    Previews are app rows too (the pipeline, the reconciler and teardown serve them as any
    app), but what a tenant asks of its apps never finds one: only callers that mean to see
    previews (the deploy job, the previews service, read-only deployment views) pass
    ``previews=True``."""

    def __init__(self, session: Session, tenant_id: str, *, previews: bool = False) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.previews = previews

    def _row(self, ref: str) -> AppRow | None:
        # Apps are addressed by id or by name; both only within the tenant.
        column = AppRow.id if ref.startswith("app_") else AppRow.name
        query = select(AppRow).where(AppRow.tenant_id == self.tenant_id, column == ref)
        if not self.previews:
            query = query.where(AppRow.kind == APP)
        return self.session.scalar(query)

    def get(self, ref: str) -> App | None:
        row = self._row(ref)
        return None if row is None else to_app(row)

    def name_taken(self, name: str) -> bool:
        """By an app or a preview: they share the tenant's names (and hostnames)."""
        query = select(AppRow.id).where(AppRow.tenant_id == self.tenant_id, AppRow.name == name)
        return self.session.scalar(query) is not None

    def add(self, *, id: str, name: str, **fields: Any) -> App:
        row = AppRow(id=id, tenant_id=self.tenant_id, name=name, **fields)
        self.session.add(row)
        self.session.flush()
        return to_app(row)

    def list(self, *, limit: int, cursor: str | None) -> Page[App]:
        query = select(AppRow).where(AppRow.tenant_id == self.tenant_id, AppRow.kind == APP)
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

    # -- previews -------------------------------------------------------------------------
    def previews_of(self, parent_id: str) -> builtins.list[App]:
        query = _previews().where(AppRow.tenant_id == self.tenant_id, AppRow.parent_app_id == parent_id)
        return [to_app(row) for row in self.session.scalars(query.order_by(AppRow.id))]


def _previews() -> Select[AppRow]:
    return select(AppRow).where(AppRow.kind == PREVIEW)


def expired_previews(session: Session, now: datetime) -> list[App]:
    """Every tenant's previews whose TTL has run out (platform-internal: the reconciler's sweep)."""
    query = _previews().where(AppRow.expires_at.is_not(None), AppRow.expires_at <= now).order_by(AppRow.expires_at)
    return [to_app(row) for row in session.scalars(query)]
