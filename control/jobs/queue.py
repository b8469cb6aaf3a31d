"""The durable job queue: state, attempts, lease + heartbeat, run_after, per-tenant limits.

A worker claims a job by taking a lease (``lease_s``) and renews it while it runs. If the
process dies, the lease lapses; ``recover_expired`` (run by every worker pool, on start and
periodically) then puts the job back in the queue (``attempts < max_attempts``) or fails it
for good, and the worker pool tells the job kind's owner why (its ``give_up``), so nothing stays
"running" forever. A server that starts as the only one on its database reclaims every
running job at once instead (``reclaim_running``). Either way the old worker's writes are
fenced: a job's writes commit only while its lease is still the writer's (``fence``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import LeaseLost
from control.domain.records import Job
from control.ids import new_id
from control.store.database import Store
from control.store.models import JobRow
from control.store.repositories.jobs import JobRepository

log = structlog.get_logger("moorage.jobs")


@dataclass(frozen=True)
class QueueConfig:
    lease_s: float = 30.0
    per_tenant: int = 1  # jobs of one tenant running at once
    retry_backoff_s: float = 2.0  # delay before a job whose worker died runs again
    dependency_wait_s: float = 600.0  # since the job was created, how long it may wait for a dependency


@dataclass(frozen=True)
class QueueDepth:
    queued: int
    running: int
    oldest_wait_s: float | None  # how long the longest-waiting job due to run has waited; None: none waits


class JobQueue:
    def __init__(self, db: Store, config: QueueConfig = QueueConfig(), *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.wakeup = threading.Event()  # set on enqueue: idle workers in this process start at once

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.config.lease_s)

    def enqueue(self, kind: str, subject_id: str, *, tenant_id: str | None, max_attempts: int = 2) -> Job:
        """In the caller's unit of work: the job exists iff its subject does."""
        with self.db.write() as session:
            job = JobRepository(session).add(
                id=new_id("job"),
                kind=kind,
                tenant_id=tenant_id,
                subject_id=subject_id,
                max_attempts=max_attempts,
                now=self.clock(),
            )
        self.db.after_commit(self.wakeup.set)  # a worker woken before the commit would find nothing
        return job

    def depth(self) -> QueueDepth:
        now = self.clock()
        with self.db.read() as session:
            queued, running, oldest = JobRepository(session).depth(now)
        return QueueDepth(queued, running, None if oldest is None else max(0.0, (now - oldest).total_seconds()))

    def has_work(self) -> bool:
        with self.db.read() as session:
            return JobRepository(session).has_claimable(self.clock())

    def claim(self, owner: str) -> Job | None:
        with self.db.write() as session:
            return JobRepository(session).claim(owner, now=self.clock(), lease=self.lease, per_tenant=self.config.per_tenant)

    def heartbeat(self, job: Job, owner: str) -> bool:
        with self.db.write() as session:
            return JobRepository(session).heartbeat(job.id, owner, now=self.clock(), lease=self.lease)

    def finish(self, job: Job, owner: str, state: str, error: str | None = None) -> bool:
        with self.db.write() as session:
            return JobRepository(session).finish(job.id, owner, state, error)

    def retry_later(self, job: Job, owner: str, error: str, delay_s: float) -> bool:
        """A dependency is down: back in the queue (True) without using up an attempt, as
        attempts count crashes, not outages; failed (False) once the job would have waited
        longer than ``dependency_wait_s`` since it was created. True too when the lease was
        lost meanwhile: the job is another worker's to settle."""
        run_after = self.clock() + timedelta(seconds=delay_s)
        if run_after - job.created_at > timedelta(seconds=self.config.dependency_wait_s):
            return not self.finish(job, owner, "failed", error)
        with self.db.write() as session:
            JobRepository(session).requeue(job.id, owner, run_after=run_after, error=error, refund_attempt=True)
        return True

    def cancel_queued(self, subject_id: str) -> int:
        with self.db.write() as session:
            return JobRepository(session).cancel_queued(subject_id)

    def get(self, job_id: str) -> Job | None:
        with self.db.read() as session:
            return JobRepository(session).get(job_id)

    def prune_finished(self, *, retention: timedelta, keep: int) -> int:
        """Finished jobs older than ``retention``, and any past the ``keep`` newest: their
        deployment or database keeps its own history."""
        with self.db.write() as session:
            return JobRepository(session).prune_finished(before=self.clock() - retention, keep=keep)

    def fence(self, job: Job, owner: str) -> Callable[[Session], None]:
        """The check a job's writes commit behind (``Store.fenced``): a worker whose lease was
        taken over, or a process that outlived its lease, commits nothing (``LeaseLost``)."""

        def check(session: Session) -> None:
            if not JobRepository(session).holds(job.id, owner):
                raise LeaseLost(f"job {job.id} is no longer leased to {owner}")

        return check

    def recover_expired(self) -> list[tuple[Job, bool]]:
        """Jobs whose worker stopped heartbeating: requeued (False) or given up (True)."""
        now = self.clock()
        with self.db.read() as session:  # the common case, nothing expired, takes no write lock
            if not JobRepository(session).expired(now):
                return []
        return self._recover(lambda jobs: jobs.expired(now), "the worker running it stopped (lease expired)", delay_s=None)

    def reclaim_running(self) -> list[tuple[Job, bool]]:
        """Every running job, at once: for a server starting as the only one on its database
        (``Store.claim_sole_use``), each was leased to the process that died before it, so
        waiting out the lease would only delay the deployment. Their workers' late writes are
        fenced by the lease (``fence``)."""
        return self._recover(lambda jobs: jobs.running(), "the control plane restarted while it ran", delay_s=0.0)

    def _recover(
        self, select_rows: Callable[[JobRepository], list[JobRow]], why: str, *, delay_s: float | None
    ) -> list[tuple[Job, bool]]:
        now = self.clock()
        delay = timedelta(seconds=self.config.retry_backoff_s if delay_s is None else delay_s)
        outcomes: list[tuple[Job, bool]] = []
        with self.db.write() as session:
            jobs = JobRepository(session)
            for row in select_rows(jobs):
                give_up = row.attempts >= row.max_attempts
                reason = f"{why} on attempt {row.attempts} of {row.max_attempts}"
                row.lease_owner, row.lease_expires_at, row.last_error = None, None, reason
                if give_up:
                    row.state = "failed"
                else:
                    row.state, row.run_after = "queued", now + delay
                session.flush()
                outcomes.append((jobs.get(row.id), give_up))  # type: ignore[arg-type]
        for job, give_up in outcomes:
            log.warning("job_lease_recovered", job_id=job.id, kind=job.kind, attempts=job.attempts, gave_up=give_up, reason=why)
        if outcomes:
            self.wakeup.set()
        return outcomes
