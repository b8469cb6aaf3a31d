"""Runs and cron schedules: rows in, immutable records out; every query scoped to one
tenant, except for the platform's own callers (workers, the scheduler: ``tenant_id=None``)."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control.domain.records import RUN_ACTIVE_STATUSES, CronSchedule, Page, Run
from control.store.models import CronScheduleRow, RunRow
from control.store.repositories.paging import SelectT, paginate


def to_run(row: RunRow) -> Run:
    return Run(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        status=row.status,
        command=tuple(json.loads(row.command)),
        timeout_s=row.timeout_s,
        trigger=row.trigger,
        volumes=row.volumes or "read-only",
        release_id=row.release_id,
        image=row.image,
        exit_code=row.exit_code,
        reason=row.reason,
        output_truncated=bool(row.output_truncated),
        output_bytes=row.output_bytes or 0,
        cancel_requested=bool(row.cancel_requested),
        log_path=row.log_path,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
    )


def to_schedule(row: CronScheduleRow) -> CronSchedule:
    return CronSchedule(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        name=row.name,
        schedule=row.schedule,
        command=tuple(json.loads(row.command)),
        timeout_s=row.timeout_s,
        enabled=bool(row.enabled),
        next_fire_at=row.next_fire_at,
        last_run_id=row.last_run_id,
        last_fired_at=row.last_fired_at,
        skipped=row.skipped or 0,
        last_skipped_at=row.last_skipped_at,
        last_skip_reason=row.last_skip_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class RunRepository:
    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(RunRow.tenant_id == self.tenant_id)

    def row(self, run_id: str, app_id: str | None = None) -> RunRow | None:
        query = self._scoped(select(RunRow).where(RunRow.id == run_id))
        if app_id is not None:
            query = query.where(RunRow.app_id == app_id)
        return self.session.scalar(query)

    def get(self, run_id: str, app_id: str | None = None) -> Run | None:
        row = self.row(run_id, app_id)
        return None if row is None else to_run(row)

    def add(self, row: RunRow) -> Run:
        self.session.add(row)
        self.session.flush()
        return to_run(row)

    def list(self, app_id: str, *, trigger: str | None, limit: int, cursor: str | None) -> Page[Run]:
        query = self._scoped(select(RunRow).where(RunRow.app_id == app_id))
        if trigger is not None:
            query = query.where(RunRow.trigger == trigger)
        return paginate(self.session, query, RunRow.id, to_run, limit=limit, cursor=cursor, newest_first=True)

    def active_ids(self) -> set[str]:
        return set(self.session.scalars(self._scoped(select(RunRow.id).where(RunRow.status.in_(RUN_ACTIVE_STATUSES)))))

    def ids(self, run_ids: builtins.list[str]) -> set[str]:
        return set(self.session.scalars(select(RunRow.id).where(RunRow.id.in_(run_ids))))

    def beyond_newest(self, keep: int) -> builtins.list[RunRow]:
        """Finished runs past each app's ``keep`` newest finished ones."""
        finished = RunRow.status.not_in(RUN_ACTIVE_STATUSES)
        doomed: builtins.list[RunRow] = []
        for app_id in self.session.scalars(select(RunRow.app_id).where(finished).distinct()):
            query = select(RunRow).where(finished, RunRow.app_id == app_id).order_by(RunRow.id.desc()).offset(keep)
            doomed.extend(self.session.scalars(query))
        return doomed

    def remove(self, run_ids: builtins.list[str]) -> int:
        result = self.session.execute(delete(RunRow).where(RunRow.id.in_(run_ids)).execution_options(synchronize_session=False))
        return int(result.rowcount)  # type: ignore[attr-defined]


class CronRepository:
    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(CronScheduleRow.tenant_id == self.tenant_id)

    def row(self, app_id: str, name: str) -> CronScheduleRow | None:
        query = select(CronScheduleRow).where(CronScheduleRow.app_id == app_id, CronScheduleRow.name == name)
        return self.session.scalar(self._scoped(query))

    def add(self, row: CronScheduleRow) -> CronSchedule:
        self.session.add(row)
        self.session.flush()
        return to_schedule(row)

    def count(self, app_id: str) -> int:
        return len(builtins.list(self.session.scalars(select(CronScheduleRow.id).where(CronScheduleRow.app_id == app_id))))

    def list(self, app_id: str, *, limit: int, cursor: str | None) -> Page[CronSchedule]:
        query = self._scoped(select(CronScheduleRow).where(CronScheduleRow.app_id == app_id))
        return paginate(self.session, query, CronScheduleRow.id, to_schedule, limit=limit, cursor=cursor)

    def due(self, now: datetime) -> builtins.list[str]:
        query = select(CronScheduleRow.id).where(CronScheduleRow.enabled.is_(True), CronScheduleRow.next_fire_at <= now)
        return builtins.list(self.session.scalars(self._scoped(query).order_by(CronScheduleRow.next_fire_at)))

    def locked(self, schedule_id: str) -> CronScheduleRow | None:
        """The row, locked to the end of the transaction where the database can (PostgreSQL):
        two servers looking at one due schedule fire it once."""
        return self.session.scalar(select(CronScheduleRow).where(CronScheduleRow.id == schedule_id).with_for_update())
