"""The retention sweep: rows that would otherwise grow without end, trimmed on a timer.

- Idempotency records past their replay window (a claim also replaces an expired row with
  the same key on the spot);
- audit events older than the operator's retention period (0 keeps them all);
- finished jobs past their retention, and beyond a fixed count: a deployment or database
  keeps its own history, a job row is only how it was run;
- finished runs beyond each app's newest ``runs_kept``, with their output logs;
- counts of failed recoveries that can no longer lock anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import structlog

from control.clock import utcnow
from control.domain.audit import AuditService
from control.domain.events import EventService
from control.domain.idempotency import IdempotencyService
from control.domain.recovery import RecoveryService
from control.domain.runs import RunService
from control.jobs.queue import JobQueue

log = structlog.get_logger("moorage.retention")


@dataclass(frozen=True)
class Retention:
    idempotency: IdempotencyService
    audit: AuditService
    jobs: JobQueue
    audit_for: timedelta | None  # None: kept for good
    jobs_for: timedelta
    jobs_kept: int
    runs: RunService | None = None
    runs_kept: int = 200
    recovery: RecoveryService | None = None
    events: EventService | None = None
    events_for: timedelta | None = None  # None: kept for good

    def sweep(self) -> dict[str, int]:
        """One pass; what it removed, by kind. One kind failing does not stop the others."""
        removed: dict[str, int] = {}
        steps: dict[str, Callable[[], int]] = {
            "idempotency_records": self.idempotency.purge_expired,
            "audit_events": self._old_audit_events,
            "jobs": lambda: self.jobs.prune_finished(retention=self.jobs_for, keep=self.jobs_kept),
            "runs": lambda: self.runs.prune(self.runs_kept) if self.runs is not None else 0,
            "recovery_attempts": lambda: self.recovery.purge_stale() if self.recovery is not None else 0,
            "events": self._old_events,
        }
        for kind, step in steps.items():
            try:
                removed[kind] = step()
            except Exception as exc:  # noqa: BLE001 (the next pass retries; the others still run)
                log.warning("retention_sweep_failed", kind=kind, error=f"{type(exc).__name__}: {exc}")
        if any(removed.values()):
            log.info("retention_swept", **{kind: n for kind, n in removed.items() if n})
        return removed

    def _old_events(self) -> int:
        if self.events is None or self.events_for is None:
            return 0
        return self.events.purge_before(utcnow() - self.events_for)

    def _old_audit_events(self) -> int:
        return self.audit.purge_before(utcnow() - self.audit_for) if self.audit_for is not None else 0


async def sweep_forever(retention: Retention, interval_s: float) -> None:
    while True:
        await anyio.sleep(interval_s)  # first pass after one interval: migrations run at startup
        await anyio.to_thread.run_sync(retention.sweep)


@asynccontextmanager
async def retention_sweeper(app: Any) -> AsyncIterator[None]:
    """A Litestar lifespan manager running the sweep while the app runs (interval 0: never)."""
    services = app.state.services
    interval = services.settings.retention_sweep_interval_s
    if interval <= 0:
        yield
        return
    # A plain task, not a task group: a startup failure must surface as itself, not wrapped
    # in an ExceptionGroup.
    task = asyncio.get_running_loop().create_task(sweep_forever(services.retention, interval))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["Retention", "retention_sweeper", "sweep_forever"]
