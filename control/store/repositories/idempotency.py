"""Idempotency records: one row per (API key, Idempotency-Key).

The unique constraint on ``(api_key_id, idempotency_key)`` is the lock: whoever inserts
the row owns the key. ``lease_expires_at`` doubles as a fencing token, so a request whose
lease was taken over after it stalled cannot overwrite or delete its successor's row.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control.domain.records import IdempotencyRecord, StoredResponse
from control.store.models import IdempotencyRecordRow

IN_FLIGHT = "in_flight"
COMPLETED = "completed"


def _to_record(row: IdempotencyRecordRow) -> IdempotencyRecord:
    response = None
    if row.state == COMPLETED and row.response_status is not None:
        headers = tuple((str(n), str(v)) for n, v in json.loads(row.response_headers or "[]"))
        response = StoredResponse(row.response_status, headers, row.response_body or b"")
    return IdempotencyRecord(
        id=row.id,
        api_key_id=row.api_key_id,
        tenant_id=row.tenant_id,
        idempotency_key=row.idempotency_key,
        fingerprint=row.fingerprint,
        state=row.state,
        lease_expires_at=row.lease_expires_at,
        expires_at=row.expires_at,
        response=response,
    )


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def try_insert(
        self,
        *,
        api_key_id: str,
        tenant_id: str | None,
        idempotency_key: str,
        fingerprint: str,
        lease_expires_at: datetime,
        expires_at: datetime,
    ) -> IdempotencyRecord | None:
        """The new in-flight row, or None when the key is already taken (unique constraint)."""
        row = IdempotencyRecordRow(
            api_key_id=api_key_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            state=IN_FLIGHT,
            lease_expires_at=lease_expires_at,
            expires_at=expires_at,
        )
        try:
            with self.session.begin_nested():  # a savepoint: a clash leaves the outer transaction usable
                self.session.add(row)
        except IntegrityError:
            return None
        return _to_record(row)

    def get(self, api_key_id: str, idempotency_key: str) -> IdempotencyRecord | None:
        query = select(IdempotencyRecordRow).where(
            IdempotencyRecordRow.api_key_id == api_key_id,
            IdempotencyRecordRow.idempotency_key == idempotency_key,
        )
        row = self.session.scalar(query)
        return None if row is None else _to_record(row)

    def take_over(self, record_id: int, old_lease: datetime | None, new_lease: datetime) -> bool:
        """Move an expired lease to a new owner; False if someone else moved it first."""
        result = self.session.execute(
            update(IdempotencyRecordRow)
            .where(
                IdempotencyRecordRow.id == record_id,
                IdempotencyRecordRow.state == IN_FLIGHT,
                IdempotencyRecordRow.lease_expires_at == old_lease,
            )
            .values(lease_expires_at=new_lease)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def complete(self, record_id: int, lease: datetime, response: StoredResponse, expires_at: datetime) -> bool:
        result = self.session.execute(
            update(IdempotencyRecordRow)
            .where(
                IdempotencyRecordRow.id == record_id,
                IdempotencyRecordRow.state == IN_FLIGHT,
                IdempotencyRecordRow.lease_expires_at == lease,
            )
            .values(
                state=COMPLETED,
                lease_expires_at=None,
                response_status=response.status,
                response_headers=json.dumps([list(h) for h in response.headers]),
                response_body=response.body,
                expires_at=expires_at,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self, record_id: int, lease: datetime) -> bool:
        result = self.session.execute(
            delete(IdempotencyRecordRow).where(
                IdempotencyRecordRow.id == record_id,
                IdempotencyRecordRow.state == IN_FLIGHT,
                IdempotencyRecordRow.lease_expires_at == lease,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_all_in_flight(self) -> int:
        """Forget every claim still in flight: for a server that starts as the only one, they
        are all a dead process's (its writes, one unit of work with the answer, were never kept)."""
        result = self.session.execute(delete(IdempotencyRecordRow).where(IdempotencyRecordRow.state == IN_FLIGHT))
        return int(result.rowcount)  # type: ignore[attr-defined]

    def delete(self, record_id: int) -> None:
        self.session.execute(delete(IdempotencyRecordRow).where(IdempotencyRecordRow.id == record_id))

    def purge_expired(self, now: datetime) -> int:
        result = self.session.execute(delete(IdempotencyRecordRow).where(IdempotencyRecordRow.expires_at <= now))
        return int(result.rowcount)  # type: ignore[attr-defined]
