"""Deployments: rows in, immutable records out; every query scoped to one tenant."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.records import ACTIVE_STATUSES, Deployment, Page
from control.store.models import DeploymentRow
from control.store.repositories.paging import SelectT, paginate


def to_deployment(row: DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        status=row.status,
        source_kind=row.source_kind,
        source=json.loads(row.source or "{}"),
        builder=row.builder,
        release_id=row.release_id,
        image=row.image,
        reason=row.reason,
        cancel_requested=bool(row.cancel_requested),
        log_path=row.log_path,
        timings=json.loads(row.timings or "{}"),
        transitions=json.loads(row.transitions or "[]"),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class DeploymentRepository:
    """``tenant_id=None`` only for platform-internal callers (workers, reconciler)."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(DeploymentRow.tenant_id == self.tenant_id)

    def row(self, deployment_id: str, app_id: str | None = None) -> DeploymentRow | None:
        query = self._scoped(select(DeploymentRow).where(DeploymentRow.id == deployment_id))
        if app_id is not None:
            query = query.where(DeploymentRow.app_id == app_id)
        return self.session.scalar(query)

    def get(self, deployment_id: str, app_id: str | None = None) -> Deployment | None:
        row = self.row(deployment_id, app_id)
        return None if row is None else to_deployment(row)

    def add(self, *, id: str, app_id: str, source_kind: str, source: dict[str, Any], log_path: str) -> Deployment:
        assert self.tenant_id is not None
        now = utcnow()
        row = DeploymentRow(
            id=id,
            tenant_id=self.tenant_id,
            app_id=app_id,
            status="queued",
            source_kind=source_kind,
            source=json.dumps(source),
            log_path=log_path,
            cancel_requested=False,
            timings="{}",
            transitions=json.dumps([{"status": "queued", "at": now.isoformat()}]),
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        self.session.flush()
        return to_deployment(row)

    def list(self, app_id: str, *, limit: int, cursor: str | None) -> Page[Deployment]:
        query = self._scoped(select(DeploymentRow).where(DeploymentRow.app_id == app_id))
        return paginate(self.session, query, DeploymentRow.id, to_deployment, limit=limit, cursor=cursor)

    def active(self, app_id: str | None = None) -> builtins.list[Deployment]:
        query = self._scoped(select(DeploymentRow).where(DeploymentRow.status.in_(ACTIVE_STATUSES)))
        if app_id is not None:
            query = query.where(DeploymentRow.app_id == app_id)
        return [to_deployment(r) for r in self.session.scalars(query)]

    def any_exist(self) -> bool:
        return self.session.scalar(self._scoped(select(DeploymentRow.id)).limit(1)) is not None


def latest_deployments(session: Session, tenant_id: str, app_ids: builtins.list[str]) -> dict[str, Deployment]:
    """Each app's newest deployment (ids are time-ordered), for the apps that have one."""
    if not app_ids:
        return {}
    newest = (
        select(func.max(DeploymentRow.id))
        .where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.app_id.in_(app_ids))
        .group_by(DeploymentRow.app_id)
    )
    rows = session.scalars(select(DeploymentRow).where(DeploymentRow.id.in_(newest)))
    return {row.app_id: to_deployment(row) for row in rows}
