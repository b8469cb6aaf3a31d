"""Fencing a request's writes with its Idempotency-Key claim.

A request's own writes and the storing of its answer are separate transactions. A process
killed between the two would leave the writes in and the key in flight, and the retry that
takes the key over once the lease lapses would do them again. So while a request holds a
claim (``held``, set by the idempotency middleware around the handler), each of its write
transactions also stamps the claim's row, in the same transaction, fenced by the lease:

- the stamp lists the ids the first attempt inserted: a takeover finding it does not run
  the request again but says what was done (``domain.idempotency``);
- a request whose lease was taken over can commit nothing more (``LeaseLost``).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from control.store.models import IdempotencyRecordRow
from control.store.repositories.idempotency import IN_FLIGHT

_INSERTED = "moorage_inserted_ids"
_WROTE = "moorage_wrote"


@dataclass(frozen=True, slots=True)
class Fence:
    record_id: int
    lease: datetime


held: ContextVar[Fence | None] = ContextVar("moorage_claim_fence", default=None)


class LeaseLost(RuntimeError):
    """This request's Idempotency-Key lease lapsed and another attempt took the key over."""


def track_writes(factory: sessionmaker[Session]) -> None:
    """Note whether a fenced request's transaction wrote anything, and the string ids of the
    rows it inserted (ours all carry a type prefix)."""

    @event.listens_for(factory, "after_flush")
    def _flushed(session: Session, _context: object) -> None:
        if held.get() is None or not (session.new or session.dirty or session.deleted):
            return
        session.info[_WROTE] = True
        for obj in session.new:
            key = inspect(obj).mapper.primary_key_from_instance(obj)
            session.info.setdefault(_INSERTED, []).extend(k for k in key if isinstance(k, str))

    @event.listens_for(factory, "do_orm_execute")
    def _statement(state: ORMExecuteState) -> None:  # UPDATE/DELETE statements bypass the flush
        if held.get() is not None and (state.is_update or state.is_delete or state.is_insert):
            state.session.info[_WROTE] = True


def stamp(session: Session) -> None:
    """Before a write transaction commits: stamp the held claim, or refuse if it is lost."""
    fence = held.get()
    if fence is None:
        return
    session.flush()
    if not session.info.pop(_WROTE, False):
        return  # nothing written: nothing to fence
    where = (IdempotencyRecordRow.id == fence.record_id, IdempotencyRecordRow.state == IN_FLIGHT,
             IdempotencyRecordRow.lease_expires_at == fence.lease)
    current = session.execute(select(IdempotencyRecordRow.effects).where(*where)).first()
    if current is None:
        raise LeaseLost("this request's Idempotency-Key was taken over by a retry; its writes are not kept")
    effects = json.loads(current[0] or "[]") + session.info.pop(_INSERTED, [])
    session.execute(update(IdempotencyRecordRow).where(*where).values(effects=json.dumps(effects)))
