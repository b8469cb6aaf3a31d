"""The audit trail: who changed what, when, and how it ended.

One event per mutating API call (and per secret reveal), whatever its outcome. Events
hold identifiers only — the route template as the action, the concrete path as the
target — never request bodies, query strings or credentials.
"""

from __future__ import annotations

from datetime import UTC, datetime

from control.clock import utcnow
from control.domain.records import AuditEvent, Page
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.audit import AuditRepository

MAX_TARGET = 500  # the column's size; longer paths are cut, never rejected
MAX_ACTION = 100


class AuditService:
    def __init__(self, db: Store) -> None:
        self.db = db

    def record(
        self,
        *,
        tenant_id: str | None,
        api_key_id: str | None,
        action: str,
        target: str,
        request_id: str,
        outcome: int,
    ) -> AuditEvent:
        event = AuditEvent(
            id=new_id("aud"),
            tenant_id=tenant_id,
            api_key_id=api_key_id,
            action=action[:MAX_ACTION],
            target=target[:MAX_TARGET],
            request_id=request_id[:128],
            outcome=outcome,
            created_at=utcnow(),
        )
        with self.db.write() as session:
            AuditRepository(session).add(event)
        return event

    def purge_before(self, cutoff: datetime) -> int:
        """Events older than ``cutoff`` (the operator's retention period) go."""
        with self.db.write() as session:
            return AuditRepository(session).purge_before(cutoff)

    def list(
        self,
        *,
        tenant_id: str | None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[AuditEvent]:
        """``tenant_id=None`` lists every event: only operators may ask for that."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without a zone is read as UTC
        with self.db.read() as session:
            return AuditRepository(session).list(tenant_id=tenant_id, action=action, since=since, limit=limit, cursor=cursor)
