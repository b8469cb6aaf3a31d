"""Idempotency-Key rules (draft-ietf-httpapi-idempotency-key-header): key format, request
fingerprint, and the claim / complete / release cycle of one key.

Decisions:
- Keys are scoped per API key (the tenant is recorded too): two callers never share one.
- The fingerprint covers method, path, the query string with its parameters sorted, and the
  body *bytes*. JSON is not canonicalised: a retry is expected to resend the same bytes, so
  re-ordering a body's keys or changing its whitespace counts as a different request (422).
- A claim holds a lease; a process that dies mid-request leaves the key locked only until the
  lease lapses, then a retry takes it over. A server that restarts as the only one on its
  database releases every claim in flight at once (they were all the dead process's). Responses 5xx are not kept (the lease is released
  so a retry runs again); 2xx-4xx are kept for ``retention`` and replayed byte for byte.
- The claim commits on its own, at once: that is what makes a concurrent duplicate wait.
  Everything else (the handler's writes and the stored answer) commits in the request's
  unit of work, so a process killed mid-request leaves nothing but the claim, and a retry
  that takes the key over runs the request as if for the first time. The stored answer is
  fenced by the lease: a request whose key was taken over meanwhile keeps nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import LeaseLost
from control.domain.names import IDEMPOTENCY_KEY
from control.domain.records import StoredResponse
from control.store.database import Store
from control.store.repositories.idempotency import COMPLETED, IdempotencyRepository

MAX_KEY_LENGTH = 255
KEY_RULE = IDEMPOTENCY_KEY.rule


def parse_key(raw: str) -> str | None:
    """The key, or None if malformed. A quoted value (an RFC 8941 sf-string, as the draft
    writes it) and the bare value name the same key."""
    value = raw.strip(" ")  # the HTTP server already dropped optional whitespace; no control character is part of a key
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if IDEMPOTENCY_KEY.accepts(value) else None


def normalise_query(query: str) -> str:
    return urlencode(sorted(parse_qsl(query, keep_blank_values=True)))


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 over length-prefixed parts, so no two different requests share an encoding."""
    return fingerprint_chunks(method, path, query, len(body), (body,))


def fingerprint_chunks(method: str, path: str, query: str, body_size: int, body: Iterable[bytes]) -> str:
    """``fingerprint`` of a body read piece by piece (a large one spooled to disk): the same
    encoding, so a key stored before an upgrade still matches. ``body`` must yield exactly
    ``body_size`` bytes."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode("utf-8", "surrogatepass"), normalise_query(query).encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    digest.update(body_size.to_bytes(8, "big"))
    seen = 0
    for chunk in body:
        seen += len(chunk)
        digest.update(chunk)
    if seen != body_size:
        raise ValueError(f"the body yielded {seen} bytes, not the {body_size} declared")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claimed:
    record_id: int
    lease: datetime  # the fencing token for settling the claim
    taken_over: bool


@dataclass(frozen=True, slots=True)
class Replay:
    response: StoredResponse


@dataclass(frozen=True, slots=True)
class KeyReused:
    """Same key, different request: a client bug, never retried into success."""


@dataclass(frozen=True, slots=True)
class InFlight:
    lease_left_s: float


Outcome = Claimed | Replay | KeyReused | InFlight


class IdempotencyService:
    def __init__(
        self,
        db: Store,
        *,
        retention: timedelta,
        lease: timedelta,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if retention <= timedelta(0) or lease <= timedelta(0):
            raise ValueError("idempotency retention and lease must be positive")
        self.db = db
        self.retention = retention
        self.lease = lease
        self.now = now

    def claim(self, api_key_id: str, tenant_id: str | None, key: str, request_fingerprint: str) -> Outcome:
        # BEGIN IMMEDIATE: concurrent duplicates queue on the write lock, and the first
        # INSERT wins through the unique constraint.
        with self.db.write_now() as session:
            records = IdempotencyRepository(session)
            now = self.now()

            def insert() -> Claimed | None:
                row = records.try_insert(
                    api_key_id=api_key_id,
                    tenant_id=tenant_id,
                    idempotency_key=key,
                    fingerprint=request_fingerprint,
                    lease_expires_at=now + self.lease,
                    expires_at=now + self.retention,
                )
                return None if row is None else Claimed(row.id, now + self.lease, taken_over=False)

            if claimed := insert():
                return claimed
            existing = records.get(api_key_id, key)
            if existing is None or existing.expires_at <= now:  # expired: purge it here, then claim
                if existing is not None:
                    records.delete(existing.id)
                claimed = insert()
                assert claimed is not None  # we hold the write lock
                return claimed
            if existing.fingerprint != request_fingerprint:
                return KeyReused()
            if existing.state == COMPLETED and existing.response is not None:
                return Replay(existing.response)
            lease = existing.lease_expires_at
            if lease is not None and lease > now:
                return InFlight((lease - now).total_seconds())
            # The owner died (or stalled past its lease): take the key over.
            new_lease = now + self.lease
            if not records.take_over(existing.id, lease, new_lease):
                return InFlight(self.lease.total_seconds())
            return Claimed(existing.id, new_lease, taken_over=True)

    def settle(self, claim: Claimed, response: StoredResponse | None) -> None:
        """At the commit of the request's unit of work: keep ``response`` for replay, or
        (None: a 5xx, an answer too large to keep, a cancelled request) forget the key so a
        retry runs the request again. Raises ``LeaseLost`` there, undoing the whole unit, when
        a retry took the key over meanwhile."""

        def write(session: Session) -> None:
            records = IdempotencyRepository(session)
            if response is None:
                held = records.release(claim.record_id, claim.lease)
            else:
                held = records.complete(claim.record_id, claim.lease, response, self.now() + self.retention)
            if not held:
                raise LeaseLost(f"Idempotency-Key record {claim.record_id} was taken over by a retry")

        self.db.defer_write(write)

    def release(self, claim: Claimed) -> bool:
        """Forget the key at once (the request's unit of work failed to commit)."""
        with self.db.write() as session:
            return IdempotencyRepository(session).release(claim.record_id, claim.lease)

    def release_all_in_flight(self) -> int:
        """For a server starting as the only one on its database (``Store.claim_sole_use``):
        every claim in flight is a dead process's, so a retry may run at once instead of
        waiting out the lease. A late settle from that process finds no claim (``LeaseLost``)."""
        with self.db.write() as session:
            return IdempotencyRepository(session).release_all_in_flight()

    def purge_expired(self) -> int:
        with self.db.write() as session:
            return IdempotencyRepository(session).purge_expired(self.now())
