"""Cron schedules of an app (``/v1/apps/{app}/cron``): each firing starts a run of the app's
current release (``trigger: cron:<name>``; its history is ``GET .../runs?cron=<name>``).

Schedules are cron syntax in UTC (5 fields, or 6 with a leading seconds field); a firing is
skipped while the schedule's previous run is still queued or running, and a firing missed
while the control plane was down runs once when it is back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.runs import Command, TimeoutS
from control.domain.cron import CronService, ScheduleView
from control.domain.schedules import SCHEDULE_RULE
from control.security.scopes import KeyScope

Schedule = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        description=f"{SCHEDULE_RULE[0].upper()}{SCHEDULE_RULE[1:]}; e.g. `0 3 * * *` (03:00 UTC daily), `*/10 * * * * *` (every 10 s).",
        examples=["0 3 * * *"],
    ),
]
ScheduleName = Annotated[str, msgspec.Meta(min_length=1, max_length=63, description="DNS label, unique per app")]


class CronIn(msgspec.Struct, forbid_unknown_fields=True):
    name: ScheduleName
    schedule: Schedule
    command: Command
    timeout_s: TimeoutS | None = None


class CronPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out (or null) stay as they are. Switching a schedule on (or changing it)
    counts its next firing from now."""

    enabled: bool | None = None
    schedule: Schedule | None = None
    command: Command | None = None
    timeout_s: TimeoutS | None = None


class LastRun(msgspec.Struct):
    id: str
    status: str
    at: Annotated[datetime, msgspec.Meta(description="when the schedule started it")]


class CronOut(msgspec.Struct):
    id: str
    app_id: str
    name: str
    schedule: str
    command: list[str]
    timeout_s: int
    enabled: bool
    next_fire_at: Annotated[datetime | None, msgspec.Meta(description="the next firing (UTC); null while disabled")]
    last_run: LastRun | None
    skipped: Annotated[int, msgspec.Meta(description="firings skipped: the previous run still going, or no release yet")]
    last_skipped_at: datetime | None
    last_skip_reason: str | None
    runs_url: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: ScheduleView) -> CronOut:
        s, last = view.schedule, view.last_run
        return cls(
            id=s.id,
            app_id=s.app_id,
            name=s.name,
            schedule=s.schedule,
            command=list(s.command),
            timeout_s=s.timeout_s,
            enabled=s.enabled,
            next_fire_at=s.next_fire_at,
            last_run=LastRun(last.id, last.status, last.created_at) if last else None,
            skipped=s.skipped,
            last_skipped_at=s.last_skipped_at,
            last_skip_reason=s.last_skip_reason,
            runs_url=f"/v1/apps/{s.app_id}/runs?cron={s.name}",
            created_at=s.created_at,
            updated_at=s.updated_at,
        )


class CronList(msgspec.Struct):
    items: list[CronOut]
    next_cursor: str | None


class CronController(Controller):
    path = "/v1/apps/{app:str}/cron"
    tags = ("cron",)

    @endpoint("POST", "/", access=KeyScope.DEPLOY, errors=(404,), status_code=201, summary="Create a cron schedule")
    def create(
        self, caller_tenant: NamedDependency[str], cron: NamedDependency[CronService], app: FromPath[str], data: JSONBody[CronIn]
    ) -> Response[CronOut]:
        made = CronOut.of(
            cron.create(
                caller_tenant, app, name=data.name, schedule=data.schedule, command=data.command, timeout_s=data.timeout_s
            )
        )
        return Response(made, status_code=201, headers={"Location": f"/v1/apps/{made.app_id}/cron/{made.name}"})

    @endpoint("GET", "/", access=KeyScope.READ, errors=(404,), summary="List an app's cron schedules")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        cron: NamedDependency[CronService],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> CronList:
        page = cron.list(caller_tenant, app, limit=limit, cursor=cursor)
        return CronList(items=[CronOut.of(v) for v in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{schedule:str}", access=KeyScope.READ, errors=(404,), summary="Get a cron schedule by name")
    def get(
        self, caller_tenant: NamedDependency[str], cron: NamedDependency[CronService], app: FromPath[str], schedule: FromPath[str]
    ) -> CronOut:
        return CronOut.of(cron.get(caller_tenant, app, schedule))

    @endpoint(
        "PATCH", "/{schedule:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Change or switch off/on a cron schedule"
    )
    def update(
        self,
        caller_tenant: NamedDependency[str],
        cron: NamedDependency[CronService],
        app: FromPath[str],
        schedule: FromPath[str],
        data: JSONBody[CronPatch],
    ) -> CronOut:
        return CronOut.of(cron.update(caller_tenant, app, schedule, **msgspec.structs.asdict(data)))

    @endpoint(
        "DELETE", "/{schedule:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Delete a cron schedule (its runs stay)"
    )
    def remove(
        self, caller_tenant: NamedDependency[str], cron: NamedDependency[CronService], app: FromPath[str], schedule: FromPath[str]
    ) -> None:
        cron.delete(caller_tenant, app, schedule)
