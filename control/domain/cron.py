"""Cron schedules: a named schedule per app that starts a run of its current release.

``schedule`` is cron syntax as croniter reads it, in UTC: five fields (minute hour day month
weekday), or six with a leading seconds field, or an alias (``@hourly``, ``@daily``, ...).

Firing (``fire_due``, called by the scheduler thread): each schedule keeps ``next_fire_at``.
A due one fires once and its next time is computed *from now*, so firings missed while the
control plane was down run at most once on its return. Overlap policy: while the
schedule's previous run is still queued or running the firing is skipped, and the skip is
recorded on the schedule (``skipped``, ``last_skipped_at``, ``last_skip_reason``); so is a
firing of an app that has no release to run, or of a suspended tenant.
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from croniter import CroniterError
from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import Conflict, NotFound, QuotaExceeded
from control.domain.names import check_dns_label
from control.domain.records import RUN_ACTIVE_STATUSES, App, CronSchedule, Page, Run
from control.domain.runs import RunService, check_command, cron_trigger, current_release
from control.domain.schedules import fire_each, next_fire, parse_schedule
from control.ids import new_id
from control.store.database import Store
from control.store.models import CronScheduleRow
from control.store.repositories.apps import AppRepository
from control.store.repositories.runs import CronRepository, RunRepository, to_schedule
from control.store.repositories.tenants import TenantRepository

log = structlog.get_logger("moorage.cron")


@dataclass(frozen=True)
class ScheduleView:
    schedule: CronSchedule
    last_run: Run | None


@dataclass(frozen=True)
class Firing:
    schedule_id: str
    name: str
    run_id: str | None  # None: skipped
    skipped: str | None = None  # why


class CronService:
    def __init__(self, db: Store, runs: RunService, *, max_per_app: int = 20, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.runs = runs
        self.max_per_app = max_per_app
        self.clock = clock

    # -- the API's side -----------------------------------------------------------------
    def create(
        self, tenant_id: str, app_ref: str, *, name: str, schedule: str, command: Sequence[str], timeout_s: int | None
    ) -> ScheduleView:
        app = self.runs.app(tenant_id, app_ref)
        check_dns_label("name", name)
        text, argv, timeout = parse_schedule(schedule), check_command(command), self.runs.timeout(timeout_s)
        with self.db.write() as session:
            repo = CronRepository(session, tenant_id)
            if repo.row(app.id, name) is not None:
                raise Conflict(f"App '{app.name}' already has a schedule named '{name}'; pick another name.", code="name-taken")
            if repo.count(app.id) >= self.max_per_app:
                raise QuotaExceeded(f"App '{app.name}' has {self.max_per_app} schedules, the most it may have; delete one first.")
            created = repo.add(
                CronScheduleRow(
                    id=new_id("cron"),
                    tenant_id=tenant_id,
                    app_id=app.id,
                    name=name,
                    schedule=text,
                    command=json.dumps(list(argv)),
                    timeout_s=timeout,
                    enabled=True,
                    next_fire_at=next_fire(text, self.clock()),
                    skipped=0,
                )
            )
        return ScheduleView(created, None)

    def list(self, tenant_id: str, app_ref: str, *, limit: int, cursor: str | None) -> Page[ScheduleView]:
        app = self.runs.app(tenant_id, app_ref)
        with self.db.read() as session:
            page = CronRepository(session, tenant_id).list(app.id, limit=limit, cursor=cursor)
            return Page([self._view(session, s) for s in page.items], page.next_cursor)

    def get(self, tenant_id: str, app_ref: str, name: str) -> ScheduleView:
        app = self.runs.app(tenant_id, app_ref)
        with self.db.read() as session:
            row = CronRepository(session, tenant_id).row(app.id, name)
            if row is None:
                raise NotFound.of("schedule", name)
            return self._view(session, to_schedule(row))

    def update(self, tenant_id: str, app_ref: str, name: str, **changes: Any) -> ScheduleView:
        """``enabled``, ``schedule``, ``command``, ``timeout_s``; None leaves a field as it is.
        Enabling (or a new schedule) counts the next firing from now: what fell due while the
        schedule was off does not run."""
        app = self.runs.app(tenant_id, app_ref)
        fields: dict[str, Any] = {}
        if changes.get("schedule") is not None:
            fields["schedule"] = parse_schedule(changes["schedule"])
        if changes.get("command") is not None:
            fields["command"] = json.dumps(list(check_command(changes["command"])))
        if changes.get("timeout_s") is not None:
            fields["timeout_s"] = self.runs.timeout(changes["timeout_s"])
        with self.db.write() as session:
            row = CronRepository(session, tenant_id).row(app.id, name)
            if row is None:
                raise NotFound.of("schedule", name)
            enabled = changes.get("enabled")
            turned_on = enabled is True and not row.enabled
            for key, value in fields.items():
                setattr(row, key, value)
            if enabled is not None:
                row.enabled = enabled
            if not row.enabled:
                row.next_fire_at = None
            elif turned_on or "schedule" in fields:
                row.next_fire_at = next_fire(row.schedule, self.clock())
            session.flush()
            return self._view(session, to_schedule(row))

    def delete(self, tenant_id: str, app_ref: str, name: str) -> None:
        """The schedule goes; its runs stay in the app's history (a running one runs to its end)."""
        app = self.runs.app(tenant_id, app_ref)
        with self.db.write() as session:
            row = CronRepository(session, tenant_id).row(app.id, name)
            if row is None:
                raise NotFound.of("schedule", name)
            session.delete(row)

    @staticmethod
    def _view(session: Session, schedule: CronSchedule) -> ScheduleView:
        last = RunRepository(session, schedule.tenant_id).get(schedule.last_run_id) if schedule.last_run_id else None
        return ScheduleView(schedule, last)

    # -- the scheduler's side -----------------------------------------------------------
    def fire_due(self) -> builtins.list[Firing]:
        """Fire every schedule due now, each in a transaction of its own (one that fails does
        not hold up the others); what each firing did."""
        now = self.clock()
        with self.db.read() as session:
            due = CronRepository(session, None).due(now)
        return fire_each(due, lambda schedule_id: self._fire(schedule_id, now), failed_event="cron_fire_failed")

    def _fire(self, schedule_id: str, now: datetime) -> Firing | None:
        with self.db.write() as session:
            row = CronRepository(session, None).locked(schedule_id)
            if row is None or not row.enabled or row.next_fire_at is None or row.next_fire_at > now:
                return None  # deleted, switched off or fired by another server meanwhile
            try:
                row.next_fire_at = next_fire(row.schedule, now)
            except (CroniterError, ValueError) as exc:  # it came round before, but never will again
                row.enabled, row.next_fire_at = False, None
                return self._skip(row, now, f"switched off: the schedule no longer comes round ({exc})")
            tenant = TenantRepository(session).get(row.tenant_id)
            if tenant is not None and tenant.is_suspended:  # its keys are refused: its schedules wait too
                return self._skip(row, now, "the tenant is suspended")
            last = RunRepository(session, None).get(row.last_run_id) if row.last_run_id else None
            if last is not None and last.status in RUN_ACTIVE_STATUSES:
                return self._skip(row, now, f"the previous run {last.id} is still {last.status}")
            app = _app(session, row)
            release = current_release(session, app)
            if release is None:
                return self._skip(row, now, "the app has no release to run yet; deploy it")
            run = self.runs.add(session, app, release, tuple(json.loads(row.command)), row.timeout_s, cron_trigger(row.name))
            row.last_run_id, row.last_fired_at = run.id, now
        log.info("cron_fired", schedule=row.name, app_id=row.app_id, run_id=run.id)
        return Firing(schedule_id, row.name, run.id)

    @staticmethod
    def _skip(row: CronScheduleRow, now: datetime, reason: str) -> Firing:
        row.skipped, row.last_skipped_at, row.last_skip_reason = (row.skipped or 0) + 1, now, reason
        log.info("cron_skipped", schedule=row.name, app_id=row.app_id, reason=reason)
        return Firing(row.id, row.name, None, reason)


def _app(session: Session, row: CronScheduleRow) -> App:
    app = AppRepository(session, row.tenant_id).get(row.app_id)
    if app is None:  # the schedule's row goes with its app (foreign key): this cannot be
        raise NotFound.of("app", row.app_id)
    return app
