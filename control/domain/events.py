"""Events: what happened to a tenant's resources, for streams, long polls and webhooks.

An event is published inside the unit of work that makes the change it tells of, so the two
commit together or not at all: a stream never tells of a deployment that rolled back, and
never misses one that committed. ``seq`` orders events in commit order (the store's one
writer hands them out) and is the cursor a client resumes from.

Sinks see each event inside the publishing transaction: the webhook outbox writes its
deliveries there, so a delivery exists exactly when its event does and survives a restart.

Waiters in this process are woken when a unit with events commits; a waiter also looks
again every second, which is how it hears of events another process committed.
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.records import Event
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.events import EventRepository

EventType = Literal[
    "deployment.queued",
    "deployment.building",
    "deployment.running",
    "deployment.failed",
    "deployment.cancelled",
    "release.created",
    "database.provisioning",
    "database.ready",
    "database.failed",
    "database.deleted",
    "backup.succeeded",
    "backup.failed",
    "restore.succeeded",
    "restore.failed",
    "domain.verified",
    "domain.active",
    "domain.failed",
    "certificate.issued",
    "certificate.failed",
    "run.succeeded",
    "run.failed",
    "run.timed_out",
    "cron.fired",
    "quota.refused",
    "key.created",
    "key.revoked",
    "webhook.disabled",
]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))
POLL_S = 1.0  # how soon a waiter hears of another process's events
MAX_DATA_BYTES = 4096  # ids and states only: a larger payload is a bug in the publisher


class EventSink(Protocol):
    def on_event(self, session: Session, event: Event) -> None:
        """Runs inside the publishing transaction; raising undoes the change and its event."""


class EventService:
    def __init__(self, db: Store, sinks: Sequence[EventSink] = ()) -> None:
        self.db = db
        self.sinks = tuple(sinks)
        self._changed = threading.Condition()
        self._commits = 0  # bumped by every commit that carried events

    def publish(self, tenant_id: str, type: EventType, subject: str, data: dict[str, Any] | None = None) -> Event:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        body = json.dumps(data or {}, sort_keys=True, default=str)
        if len(body) > MAX_DATA_BYTES:
            raise ValueError(f"event {type} carries {len(body)} bytes of data; at most {MAX_DATA_BYTES}")
        with self.db.write() as session:
            event = EventRepository(session).add(
                id=new_id("evt"), tenant_id=tenant_id, type=type, subject=subject, data=body, created_at=utcnow()
            )
            for sink in self.sinks:
                sink.on_event(session, event)
            self.db.after_commit(self._wake)
        return event

    def list(self, tenant_id: str, *, after: int = 0, types: Sequence[str] = (), limit: int = 100) -> list[Event]:
        """The tenant's events after ``after`` (a seq), oldest first."""
        with self.db.read() as session:
            return EventRepository(session).list(tenant_id, after=after, types=types, limit=limit)

    def last_seq(self, tenant_id: str) -> int:
        """Where a client that wants only what happens from now on starts (0: none yet)."""
        with self.db.read() as session:
            return EventRepository(session).last_seq(tenant_id)

    def wait_for(
        self, tenant_id: str, *, after: int, timeout_s: float, types: Sequence[str] = (), limit: int = 100
    ) -> builtins.list[Event]:
        """The events after ``after`` as soon as there is one, or [] after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changed:
                seen = self._commits
            found = self.list(tenant_id, after=after, types=types, limit=limit)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            with self._changed:
                if self._commits == seen:
                    self._changed.wait(min(left, POLL_S))

    def purge_before(self, cutoff: datetime) -> int:
        """Events older than ``cutoff`` (the retention period) go; seq numbers are never reused."""
        with self.db.write() as session:
            return EventRepository(session).purge_before(cutoff)

    def _wake(self) -> None:
        with self._changed:
            self._commits += 1
            self._changed.notify_all()
