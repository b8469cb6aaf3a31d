"""Events as stored: appended in commit order, read forwards from a seq."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control.domain.records import Event
from control.store.models import EventRow


def to_event(row: EventRow) -> Event:
    return Event(
        seq=row.seq,
        id=row.id,
        tenant_id=row.tenant_id,
        type=row.type,
        subject=row.subject,
        data=json.loads(row.data or "{}"),
        created_at=row.created_at,
    )


class EventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *, id: str, tenant_id: str, type: str, subject: str, data: str, created_at: datetime) -> Event:
        row = EventRow(id=id, tenant_id=tenant_id, type=type, subject=subject, data=data, created_at=created_at)
        self.session.add(row)
        self.session.flush()  # the seq, now: sinks and the answer name it
        return to_event(row)

    def list(self, tenant_id: str, *, after: int, types: Sequence[str], limit: int) -> list[Event]:
        query = select(EventRow).where(EventRow.tenant_id == tenant_id, EventRow.seq > after)
        if types:
            query = query.where(EventRow.type.in_(list(types)))
        rows = self.session.scalars(query.order_by(EventRow.seq).limit(limit))
        return [to_event(row) for row in rows]

    def last_seq(self, tenant_id: str) -> int:
        found = self.session.scalar(select(func.max(EventRow.seq)).where(EventRow.tenant_id == tenant_id))
        return int(found or 0)

    def purge_before(self, cutoff: datetime) -> int:
        result = self.session.execute(delete(EventRow).where(EventRow.created_at < cutoff))
        return int(result.rowcount)  # type: ignore[attr-defined]
