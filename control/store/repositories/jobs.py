"""The job queue's queries. Callers run them inside ``Database.write()`` (BEGIN IMMEDIATE on
SQLite), so a claim and the running-count it checks are one atomic step."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from control.domain.records import Job
from control.store.models import JobRow

FINISHED = ("succeeded", "failed", "cancelled")


def to_job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        tenant_id=row.tenant_id,
        subject_id=row.subject_id,
        state=row.state,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        run_after=row.run_after,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        last_error=row.last_error,
        created_at=row.created_at,
    )


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *, id: str, kind: str, tenant_id: str | None, subject_id: str, max_attempts: int, now: datetime) -> Job:
        row = JobRow(
            id=id,
            kind=kind,
            tenant_id=tenant_id,
            subject_id=subject_id,
            state="queued",
            attempts=0,
            max_attempts=max_attempts,
            run_after=now,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        self.session.flush()
        return to_job(row)

    def get(self, job_id: str) -> Job | None:
        row = self.session.get(JobRow, job_id)
        return None if row is None else to_job(row)

    def depth(self, now: datetime) -> tuple[int, int, datetime | None]:
        """Jobs queued, jobs running, and since when the longest-waiting claimable job waits."""
        queued = self.session.scalar(select(func.count()).select_from(JobRow).where(JobRow.state == "queued"))
        running = self.session.scalar(select(func.count()).select_from(JobRow).where(JobRow.state == "running"))
        oldest = self.session.scalar(select(func.min(JobRow.run_after)).where(JobRow.state == "queued", JobRow.run_after <= now))
        return int(queued or 0), int(running or 0), oldest

    def has_claimable(self, now: datetime) -> bool:
        query = select(JobRow.id).where(JobRow.state == "queued", JobRow.run_after <= now).limit(1)
        return self.session.scalar(query) is not None

    def claim(self, owner: str, *, now: datetime, lease: timedelta, per_tenant: int) -> Job | None:
        running = dict(
            self.session.execute(
                select(JobRow.tenant_id, func.count()).where(JobRow.state == "running").group_by(JobRow.tenant_id)
            ).all()
        )
        candidates = self.session.scalars(
            select(JobRow)
            .where(JobRow.state == "queued", JobRow.run_after <= now)
            .order_by(JobRow.run_after, JobRow.id)
            .limit(100)
        )
        for row in candidates:
            if row.tenant_id is not None and running.get(row.tenant_id, 0) >= per_tenant:
                continue  # this tenant is at its limit; the next tenant's job may go first
            row.state, row.attempts = "running", row.attempts + 1
            row.lease_owner, row.lease_expires_at, row.heartbeat_at = owner, now + lease, now
            self.session.flush()
            return to_job(row)
        return None

    def _owned(self, job_id: str, owner: str) -> JobRow | None:
        row = self.session.get(JobRow, job_id)
        return row if row is not None and row.state == "running" and row.lease_owner == owner else None

    def holds(self, job_id: str, owner: str) -> bool:
        """Whether ``owner`` still holds the job's lease, read afresh (and, on PostgreSQL,
        share-locked to the end of the transaction, so no take-over slips in before the commit)."""
        query = (
            select(JobRow.id)
            .where(JobRow.id == job_id, JobRow.state == "running", JobRow.lease_owner == owner)
            .with_for_update(read=True)
        )
        return self.session.execute(query).first() is not None

    def heartbeat(self, job_id: str, owner: str, *, now: datetime, lease: timedelta) -> bool:
        row = self._owned(job_id, owner)
        if row is None:
            return False  # the lease was lost (expired and taken over): the worker must stop
        row.heartbeat_at, row.lease_expires_at = now, now + lease
        return True

    def finish(self, job_id: str, owner: str, state: str, error: str | None = None) -> bool:
        row = self._owned(job_id, owner)
        if row is None:
            return False
        row.state, row.last_error, row.lease_owner, row.lease_expires_at = state, error, None, None
        return True

    def requeue(self, job_id: str, owner: str, *, run_after: datetime, error: str, refund_attempt: bool = False) -> bool:
        row = self._owned(job_id, owner)
        if row is None:
            return False
        row.state, row.run_after, row.last_error, row.lease_owner, row.lease_expires_at = "queued", run_after, error, None, None
        if refund_attempt:
            row.attempts -= 1
        return True

    def expired(self, now: datetime) -> list[JobRow]:
        return list(self.session.scalars(select(JobRow).where(JobRow.state == "running", JobRow.lease_expires_at < now)))

    def running(self) -> list[JobRow]:
        return list(self.session.scalars(select(JobRow).where(JobRow.state == "running")))

    def cancel_queued(self, subject_id: str) -> int:
        rows = self.session.scalars(select(JobRow).where(JobRow.subject_id == subject_id, JobRow.state == "queued"))
        count = 0
        for row in rows:
            row.state, count = "cancelled", count + 1
        return count

    def prune_finished(self, *, before: datetime, keep: int) -> int:
        """Finished jobs (succeeded, failed, cancelled) last changed before ``before``, and
        all but the ``keep`` most recent of the rest. Queued and running jobs are never touched."""
        finished = JobRow.state.in_(FINISHED)
        newest = select(JobRow.id).where(finished).order_by(JobRow.updated_at.desc(), JobRow.id.desc()).limit(keep)
        doomed = delete(JobRow).where(finished, or_(JobRow.updated_at < before, JobRow.id.not_in(newest)))
        result = self.session.execute(doomed.execution_options(synchronize_session=False))
        return int(result.rowcount)  # type: ignore[attr-defined]
