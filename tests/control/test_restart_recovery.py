"""What a server that restarts takes back from the process before it, and what that process,
should it write late, can no longer change:

- the SQLite server lock: one live server per database file, freed when its process dies
  however it dies (``kill -9`` included);
- running jobs reclaimed at once when the server is the only one (not after their lease);
- Idempotency-Key claims in flight released at once, so a retry runs instead of 409;
- the fence: a job's writes commit only while its lease is still the writer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from control.domain.errors import DatabaseInUse, LeaseLost
from control.domain.idempotency import Claimed, IdempotencyService
from control.domain.records import Job, StoredResponse
from control.jobs.queue import JobQueue, QueueConfig
from control.jobs.workers import JobContext, JobKind, WorkerPool
from control.store import migrate
from control.store.database import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Store:
    database = Store(f"sqlite:///{tmp_path / 'moorage.db'}")
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


def _notes(db: Store) -> list[str]:
    with db.read() as session:
        return list(session.execute(text("SELECT note FROM notes ORDER BY rowid")).scalars())


def _with_notes(db: Store) -> None:
    with db.write() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS notes (note TEXT)"))


def _note(db: Store, note: str) -> None:
    with db.write() as session:
        session.execute(text("INSERT INTO notes VALUES (:n)"), {"n": note})


# -- the server lock ------------------------------------------------------------------------
def test_a_second_server_on_one_sqlite_file_is_refused_and_told_who_holds_it(db: Store) -> None:
    assert db.claim_sole_use() is True
    assert db.claim_sole_use() is True  # asking again in the same server is not a conflict
    other = Store(db.url)
    with pytest.raises(DatabaseInUse) as refused:
        other.claim_sole_use()
    assert f"pid {os.getpid()}" in str(refused.value) and "MOORAGE_DATA_DIR" in str(refused.value)
    db.dispose()  # the holder stops: the lock is free
    assert other.claim_sole_use() is True
    other.dispose()


def test_the_lock_is_free_the_moment_its_holder_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'moorage.db'}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from control.store.database import Store; s = Store({url!r}); s.claim_sole_use(); print('held', flush=True); input()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DatabaseInUse):
            Store(url).claim_sole_use()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        after = Store(url)
        assert after.claim_sole_use() is True
        after.dispose()
    finally:
        holder.kill()


def test_only_a_sqlite_file_has_a_server_lock() -> None:
    memory = Store("sqlite://")
    assert memory.claim_sole_use() is False  # nothing on disk to share: nothing to reclaim either


# -- jobs -----------------------------------------------------------------------------------
def test_a_restarted_sole_server_reclaims_running_jobs_at_once_and_gives_up_spent_ones(db: Store) -> None:
    queue = JobQueue(db, QueueConfig(lease_s=30, per_tenant=5, retry_backoff_s=5))
    with db.write():
        first = queue.enqueue("deploy", "dep_1", tenant_id="ten_a", max_attempts=2)
        spent = queue.enqueue("deploy", "dep_2", tenant_id="ten_a", max_attempts=1)
    assert queue.claim("dead:w0") is not None and queue.claim("dead:w1") is not None  # then the process died
    given_up: list[tuple[str, str]] = []
    ran = []
    pool = WorkerPool(
        queue,
        {"deploy": JobKind(lambda job, ctx: ran.append(job.subject_id), lambda job, why: given_up.append((job.subject_id, why)))},
        count=1,
        poll_s=0.05,
    )
    started = time.monotonic()
    pool.start(sole=True)
    try:
        while not ran and time.monotonic() - started < 5:
            time.sleep(0.02)
    finally:
        pool.stop()
    assert ran == ["dep_1"], "the job with an attempt left ran again, without waiting out its 30 s lease"
    assert time.monotonic() - started < 2
    assert given_up and given_up[0][0] == "dep_2" and "restarted" in given_up[0][1]
    assert queue.get(first.id).state == "succeeded"  # type: ignore[union-attr]
    assert queue.get(spent.id).state == "failed"  # type: ignore[union-attr]


def test_a_server_that_may_share_its_database_leaves_running_jobs_to_their_lease(db: Store) -> None:
    queue = JobQueue(db, QueueConfig(lease_s=30))
    with db.write():
        job = queue.enqueue("deploy", "dep_1", tenant_id="ten_a")
    queue.claim("other-live-process:w0")
    pool = WorkerPool(queue, {"deploy": JobKind(lambda job, ctx: None)}, count=0)
    pool.start(sole=False)
    pool.stop()
    assert queue.get(job.id).lease_owner == "other-live-process:w0"  # type: ignore[union-attr]


def test_a_late_writer_whose_job_was_reclaimed_commits_nothing(db: Store) -> None:
    """The old process's worker wakes up after the restart took its job back: every write it
    makes under its fence fails with LeaseLost, in its own unit of work and in a nested one."""
    _with_notes(db)
    queue = JobQueue(db, QueueConfig(lease_s=30))
    with db.write():
        queue.enqueue("deploy", "dep_1", tenant_id="ten_a")
    old = queue.claim("old-process:w0")
    assert old is not None
    with db.fenced(queue.fence(old, "old-process:w0")):
        _note(db, "written while the lease was held")
    queue.reclaim_running()
    new = queue.claim("new-process:w0")
    assert new is not None and new.id == old.id
    with db.fenced(queue.fence(old, "old-process:w0")):
        with pytest.raises(LeaseLost):
            _note(db, "late: after the take-over")
        with pytest.raises(LeaseLost), db.write():
            _note(db, "late, nested")
    with db.fenced(queue.fence(new, "new-process:w0")):
        _note(db, "the new owner's")
    assert _notes(db) == ["written while the lease was held", "the new owner's"]


def test_a_worker_that_loses_its_lease_mid_job_neither_finishes_nor_gives_it_up(db: Store) -> None:
    _with_notes(db)
    queue = JobQueue(db, QueueConfig(lease_s=30))
    with db.write():
        job = queue.enqueue("deploy", "dep_1", tenant_id="ten_a")
    claimed = queue.claim("w-old")
    assert claimed is not None
    given_up: list[str] = []
    taken: list[Job | None] = []

    def run(job: Job, ctx: JobContext) -> None:
        _note(db, "step 1")
        # Meanwhile, elsewhere (a thread: none of this worker's context), a restarted server
        # took the job back and another worker holds it now.
        elsewhere = threading.Thread(target=lambda: (queue.reclaim_running(), taken.append(queue.claim("w-new"))))
        elsewhere.start()
        elsewhere.join()
        _note(db, "step 2")  # raises LeaseLost: the pool stops here

    pool = WorkerPool(queue, {"deploy": JobKind(run, lambda job, why: given_up.append(why))}, count=0)
    pool.run_one(claimed, "w-old")
    assert _notes(db) == ["step 1"]
    after = queue.get(job.id)
    assert after is not None and after.state == "running" and after.lease_owner == "w-new"
    assert given_up == [] and taken and taken[0] is not None


# -- Idempotency-Key claims -----------------------------------------------------------------
def test_a_restarted_sole_server_releases_claims_in_flight_and_fences_the_late_settle(db: Store) -> None:
    keys = IdempotencyService(db, retention=timedelta(hours=1), lease=timedelta(seconds=60))
    dead = keys.claim("key_1", "ten_a", "k-1", "fp")
    assert isinstance(dead, Claimed)
    done = keys.claim("key_1", "ten_a", "k-2", "fp")
    assert isinstance(done, Claimed)
    keys.settle(done, StoredResponse(201, (), b"{}"))
    assert type(keys.claim("key_1", "ten_a", "k-1", "fp")).__name__ == "InFlight"  # before: 60 s of 409s

    assert keys.release_all_in_flight() == 1
    retry = keys.claim("key_1", "ten_a", "k-1", "fp")
    assert isinstance(retry, Claimed) and not retry.taken_over  # runs now, as if for the first time
    assert type(keys.claim("key_1", "ten_a", "k-2", "fp")).__name__ == "Replay"  # kept answers stay
    with pytest.raises(LeaseLost):
        keys.settle(dead, StoredResponse(201, (), b"{}"))  # the dead request's answer, written late


def test_release_all_in_flight_leaves_nothing_else(db: Store) -> None:
    keys = IdempotencyService(
        db, retention=timedelta(hours=1), lease=timedelta(seconds=60), now=lambda: datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert keys.release_all_in_flight() == 0
