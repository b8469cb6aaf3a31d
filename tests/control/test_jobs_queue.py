"""The durable job queue: claims, per-tenant concurrency, lease expiry and recovery, bounded
attempts, and a worker pool that finishes what a dead worker left behind."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control.domain.records import Job
from control.jobs.queue import JobQueue, QueueConfig
from control.jobs.workers import JobContext, JobKind, RetryLater, WorkerPool
from control.store import migrate
from control.store.database import Store


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(tmp_path: Path) -> Store:
    database = Store(f"sqlite:///{tmp_path / 'q.db'}")
    migrate.upgrade(database.engine)
    return database


def _enqueue(queue: JobQueue, subject: str, tenant: str = "ten_a", max_attempts: int = 2) -> Job:
    with queue.db.write():
        return queue.enqueue("deploy", subject, tenant_id=tenant, max_attempts=max_attempts)


def test_claim_takes_the_oldest_and_sets_a_lease(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(lease_s=30, per_tenant=5), clock=clock)
    first = _enqueue(queue, "dep_1")
    _enqueue(queue, "dep_2")
    job = queue.claim("w1")
    assert job is not None and job.id == first.id and job.state == "running" and job.attempts == 1
    assert job.lease_owner == "w1" and job.lease_expires_at == clock.now + timedelta(seconds=30)


def test_per_tenant_concurrency_lets_other_tenants_go_first(db: Store) -> None:
    queue = JobQueue(db, QueueConfig(per_tenant=1), clock=Clock())
    _enqueue(queue, "dep_a1", "ten_a")
    _enqueue(queue, "dep_a2", "ten_a")
    _enqueue(queue, "dep_b1", "ten_b")
    taken = [queue.claim("w1"), queue.claim("w2"), queue.claim("w3")]
    assert [j.subject_id if j else None for j in taken] == ["dep_a1", "dep_b1", None]
    assert queue.finish(taken[0], "w1", "succeeded")  # type: ignore[arg-type]
    nxt = queue.claim("w3")
    assert nxt is not None and nxt.subject_id == "dep_a2"


def test_heartbeat_extends_the_lease_and_only_the_owner_may(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(lease_s=10), clock=clock)
    _enqueue(queue, "dep_1")
    job = queue.claim("w1")
    assert job is not None
    clock.advance(8)
    assert queue.heartbeat(job, "w1")
    assert not queue.heartbeat(job, "someone-else")
    clock.advance(8)  # 16 s after the claim, 8 after the beat: still leased
    assert queue.recover_expired() == []


def test_an_expired_lease_is_retried_then_given_up_with_a_reason(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(lease_s=10, retry_backoff_s=2), clock=clock)
    gave_up: list[tuple[str, str]] = []
    never_run = JobKind(lambda job, ctx: None, give_up=lambda job, reason: gave_up.append((job.subject_id, reason)))
    pool = WorkerPool(queue, {"deploy": never_run}, count=0)  # its owner learns of the verdict through the pool
    _enqueue(queue, "dep_1", max_attempts=2)
    assert queue.claim("dead-worker") is not None
    clock.advance(11)  # the worker died: no heartbeat
    [(job, given_up)] = queue.recover_expired()
    assert not given_up and job.state == "queued" and "lease expired" in (job.last_error or "")
    assert queue.claim("w2") is None  # run_after: backoff first
    clock.advance(2)
    again = queue.claim("w2")
    assert again is not None and again.attempts == 2
    clock.advance(11)  # died again: attempts are bounded
    pool.recover()
    job = queue.get(again.id)
    assert job is not None and job.state == "failed"
    assert gave_up == [("dep_1", job.last_error)] and "attempt 2 of 2" in gave_up[0][1]
    assert queue.claim("w3") is None  # nothing left running or queued: never stuck


def test_a_lost_lease_cannot_finish_the_job(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(lease_s=10, retry_backoff_s=0), clock=clock)
    _enqueue(queue, "dep_1", max_attempts=3)
    slow = queue.claim("slow")
    clock.advance(11)
    queue.recover_expired()
    fresh = queue.claim("fresh")
    assert slow is not None and fresh is not None
    assert not queue.finish(slow, "slow", "succeeded")  # the late worker's verdict is ignored
    assert queue.finish(fresh, "fresh", "succeeded")


def test_worker_pool_runs_jobs_retries_later_and_recovers_dead_workers(db: Store) -> None:
    queue = JobQueue(db, QueueConfig(lease_s=1, retry_backoff_s=0, per_tenant=2))
    ran: list[tuple[str, int]] = []
    done = threading.Event()

    def handler(job: Job, ctx: JobContext) -> None:
        ran.append((job.subject_id, job.attempts))
        if job.subject_id == "flaky" and len([r for r in ran if r[0] == "flaky"]) == 1:
            raise RetryLater("dependency down", delay_s=0)
        if len(ran) >= 3:
            done.set()

    # A job a crashed process left running, lease already lapsed: the pool picks it up.
    _enqueue(queue, "orphaned", max_attempts=2)
    assert queue.claim("crashed-process") is not None
    time.sleep(1.1)
    _enqueue(queue, "flaky", max_attempts=2)
    pool = WorkerPool(queue, {"deploy": JobKind(handler)}, count=2, poll_s=0.05, recover_every_s=0.2)
    pool.start()
    try:
        assert done.wait(10), ran
    finally:
        pool.stop()
    # Waiting for a dependency used no attempt: the rerun is still attempt 1.
    assert sorted(ran) == [("flaky", 1), ("flaky", 1), ("orphaned", 2)]


def test_retry_later_keeps_the_attempt_but_gives_up_after_the_dependency_wait(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(dependency_wait_s=60), clock=clock)
    created = _enqueue(queue, "dep_1", max_attempts=1)
    for _ in range(5):  # an outage longer than max_attempts runs: still queued, attempts unchanged
        job = queue.claim("w")
        assert job is not None and job.attempts == 1
        assert queue.retry_later(job, "w", "docker down", delay_s=10)
        assert queue.get(created.id).state == "queued"  # type: ignore[union-attr]
        clock.advance(10)
    job = queue.claim("w")
    assert job is not None
    assert not queue.retry_later(job, "w", "docker down", delay_s=20)  # 50 s waited + 20 > 60
    failed = queue.get(created.id)
    assert failed is not None and failed.state == "failed" and failed.last_error == "docker down"


def test_finished_jobs_are_pruned_by_age_and_by_count_and_live_ones_never(db: Store) -> None:
    clock = Clock()
    queue = JobQueue(db, QueueConfig(per_tenant=100), clock=clock)
    finished = []
    for n in range(6):
        job = _enqueue(queue, f"dep_{n}")
        claimed = queue.claim("w1")
        assert claimed is not None and claimed.id == job.id
        assert queue.finish(claimed, "w1", "succeeded" if n % 2 else "failed")
        finished.append(job.id)
    running = _enqueue(queue, "dep_running")
    assert queue.claim("w1") is not None
    queued = _enqueue(queue, "dep_queued")

    assert queue.prune_finished(retention=timedelta(days=1), keep=4) == 2  # the count bound: the newest 4 stay
    assert queue.prune_finished(retention=timedelta(days=1), keep=4) == 0
    with db.write() as session:  # what updated_at says: the clock of the process that wrote it
        from sqlalchemy import update

        from control.store.models import JobRow

        session.execute(update(JobRow).where(JobRow.id == finished[2]).values(updated_at=datetime.now(UTC) - timedelta(days=2)))
    clock.now = datetime.now(UTC)
    assert queue.prune_finished(retention=timedelta(days=1), keep=4) == 1  # the age bound
    left = {job_id for job_id in [*finished, running.id, queued.id] if queue.get(job_id) is not None}
    assert left == {*finished[3:], running.id, queued.id}
