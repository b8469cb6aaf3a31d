"""Worker threads that run queued jobs in the control-plane process, and what their jobs share.

Threads, not asyncio tasks: builds and container calls are blocking SDK calls. Each running
job gets a heartbeat thread renewing its lease; a handler asks ``ctx.lease_lost`` between
steps and stops if another worker has taken the job over.

Jobs tell a dependency outage from their own failure with ``as_outage``: Docker restarting
mid-build, a socket that is gone for a moment, a breaker that is open say nothing about the
tenant's app, so the job goes back to the queue (``RetryLater``, which uses no attempt)
instead of failing the deployment or database. ``AppLocks`` keeps a swap, a database job
and a reconcile pass from acting on one app (or database) at once in this process.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from control.domain.errors import LeaseLost
from control.domain.records import Job
from control.jobs.queue import JobQueue
from runtime.failures import CircuitOpenError, is_dependency_failure

log = structlog.get_logger("moorage.jobs")
OUTAGE_RETRY_S = 2.0  # the next try also goes through the breaker, which backs off for longer


class RetryLater(Exception):
    """A dependency is down: run the job again after ``delay_s``. Waiting does not use up one
    of the job's attempts; the queue bounds it in time instead (``dependency_wait_s``)."""

    def __init__(self, reason: str, delay_s: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


def as_outage(exc: BaseException) -> RetryLater | None:
    """The ``RetryLater`` to raise when ``exc`` is a dependency outage, else None."""
    if isinstance(exc, CircuitOpenError):
        return RetryLater(f"dependency '{exc.name}' unavailable (circuit open)", delay_s=max(1.0, exc.retry_after))
    if is_dependency_failure(exc, idempotent=False):  # unreachable, reset or timed out; a 5xx answer is not an outage
        return RetryLater(
            f"lost the connection to the Docker engine ({type(exc).__name__}: {str(exc)[:200]})", delay_s=OUTAGE_RETRY_S
        )
    return None


class AppLocks:
    """Per-app (or per-database) locks in this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock(key):
            yield

    @contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        lock = self._lock(key)
        acquired = lock.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()


@dataclass
class JobContext:
    job: Job
    owner: str
    lease_lost: threading.Event = field(default_factory=threading.Event)


Handler = Callable[[Job, JobContext], None]
GiveUp = Callable[[Job, str], None]


@dataclass(frozen=True)
class JobKind:
    """What a worker does with a job of one kind, and whom it tells when the job is given up
    (its attempts used, or a dependency down too long) so the job's subject never stays busy."""

    run: Handler
    give_up: GiveUp | None = None


class WorkerPool:
    def __init__(
        self, queue: JobQueue, kinds: Mapping[str, JobKind], *, count: int = 2, poll_s: float = 0.5, recover_every_s: float = 5.0
    ) -> None:
        self.queue = queue
        self.kinds: Mapping[str, JobKind] = MappingProxyType(dict(kinds))  # the one registry, fixed at construction
        self.count = count
        self.poll_s = poll_s
        self.recover_every_s = recover_every_s
        self.process_id = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, *, sole: bool = False) -> None:
        """Start the workers. ``sole``: this process is the only one on its database
        (``Store.claim_sole_use``), so every job still running is a dead process's and is
        reclaimed now; otherwise such jobs get their verdict when their lease runs out."""
        self._stop.clear()
        if sole:
            self._settle(self.queue.reclaim_running)
        self.recover()
        for n in range(self.count):
            thread = threading.Thread(
                target=self._loop, args=(f"{self.process_id}:w{n}",), name=f"moorage-worker-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self.count:
            recoverer = threading.Thread(target=self._recover_loop, name="moorage-job-recovery", daemon=True)
            recoverer.start()
            self._threads.append(recoverer)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.wakeup.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def recover(self) -> list[tuple[Job, bool]]:
        """Put back (False) or give up (True) the jobs whose worker died, telling the owners of
        those given up; the pool does this on start and periodically."""
        return self._settle(self.queue.recover_expired)

    def _settle(self, recover: Callable[[], list[tuple[Job, bool]]]) -> list[tuple[Job, bool]]:
        try:
            outcomes = recover()
        except Exception as exc:  # noqa: BLE001 (a failed sweep must not kill the pool; the next one retries)
            log.warning("job_recovery_failed", error=f"{type(exc).__name__}: {exc}")
            return []
        for job, gave_up in outcomes:
            if gave_up:
                self._give_up(job, job.last_error or "lease expired")
        return outcomes

    def _recover_loop(self) -> None:
        while not self._stop.wait(self.recover_every_s):
            self.recover()

    def _loop(self, owner: str) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim(owner) if self.queue.has_work() else None
            except Exception as exc:  # noqa: BLE001 (a failed claim must not kill the worker; it polls again)
                log.warning("job_claim_failed", error=f"{type(exc).__name__}: {exc}")
                job = None
            if job is None:
                self.queue.wakeup.wait(self.poll_s)
                self.queue.wakeup.clear()
                continue
            self.run_one(job, owner)

    def run_one(self, job: Job, owner: str) -> None:
        ctx = JobContext(job, owner)
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ctx, beating), daemon=True)
        beat.start()
        bound = structlog.contextvars.bound_contextvars(job_id=job.id, kind=job.kind, tenant_id=job.tenant_id)
        with bound:
            try:
                with self.queue.db.fenced(self.queue.fence(job, owner)):
                    self.kinds[job.kind].run(job, ctx)
            except LeaseLost as exc:  # another worker holds the job now: it owns what happens next
                log.warning("job_lease_lost", error=str(exc))
            except RetryLater as exc:
                requeued = self.queue.retry_later(job, owner, exc.reason, exc.delay_s)
                log.warning("job_retry_later", reason=exc.reason, requeued=requeued)
                if not requeued:
                    self._give_up(job, exc.reason)
            except Exception as exc:
                log.error("job_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                if self.queue.finish(job, owner, "failed", f"{type(exc).__name__}: {exc}"):
                    self._give_up(job, f"internal error: {type(exc).__name__}")
            else:
                self.queue.finish(job, owner, "succeeded")
            finally:
                beating.set()
                beat.join(5)

    def _give_up(self, job: Job, reason: str) -> None:
        kind = self.kinds.get(job.kind)
        if kind is not None and kind.give_up is not None:
            kind.give_up(job, reason)

    def _heartbeat(self, ctx: JobContext, done: threading.Event) -> None:
        interval = max(0.2, self.queue.config.lease_s / 3)
        while not done.wait(interval):
            try:
                if not self.queue.heartbeat(ctx.job, ctx.owner):
                    ctx.lease_lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 (a missed beat is survivable; the lease has slack)
                log.warning("job_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
