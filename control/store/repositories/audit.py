"""The audit trail as stored: append and page backwards (newest first)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control.domain.records import AuditEvent, Page
from control.store.models import AuditEventRow


def to_event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        tenant_id=row.tenant_id,
        api_key_id=row.api_key_id,
        action=row.action,
        target=row.target,
        request_id=row.request_id,
        outcome=row.outcome,
        created_at=row.created_at,
    )


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: AuditEvent) -> None:
        self.session.add(
            AuditEventRow(
                id=event.id,
                tenant_id=event.tenant_id,
                api_key_id=event.api_key_id,
                action=event.action,
                target=event.target,
                request_id=event.request_id,
                outcome=event.outcome,
                created_at=event.created_at,
            )
        )

    def list(
        self,
        *,
        tenant_id: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> Page[AuditEvent]:
        """``tenant_id`` None: every tenant's events and the operators' (operator view).
        Ids are time-ordered, so descending ids are newest first and make a stable cursor."""
        query = select(AuditEventRow)
        if tenant_id is not None:
            query = query.where(AuditEventRow.tenant_id == tenant_id)
        if action is not None:
            query = query.where(AuditEventRow.action == action)
        if since is not None:
            query = query.where(AuditEventRow.created_at >= since)
        if cursor:
            query = query.where(AuditEventRow.id < cursor)
        rows = self.session.scalars(query.order_by(AuditEventRow.id.desc()).limit(limit + 1)).all()
        items = [to_event(row) for row in rows[:limit]]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    def purge_before(self, cutoff: datetime) -> int:
        result = self.session.execute(delete(AuditEventRow).where(AuditEventRow.created_at < cutoff))
        return int(result.rowcount)  # type: ignore[attr-defined]
