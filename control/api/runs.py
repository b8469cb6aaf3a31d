"""One-off runs of an app (``/v1/apps/{app}/runs``): a command in a new container from the
app's current release, with its env vars and database links, sandboxed, never routed.

``POST`` answers 202 with the run to poll (and ``Location``); 409 ``no-release`` when the app
was never deployed. The run's output streams at ``.../{run}/logs`` (text, or SSE with
``follow=true``: ``event: log`` per line, then ``event: status`` with ``{"status", "reason",
"exit_code", "output_truncated"}``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, KwargDefinition, QueryParameter
from litestar.response import ServerSentEvent

from control.api.endpoints import Cursor, Limit, endpoint, route
from control.api.streaming import follow_log
from control.domain.records import Run
from control.domain.releases import ReleaseService
from control.domain.runs import ARG_MAX_CHARS, COMMAND_MAX_ITEMS, RunService
from control.jobs.build import read_from
from control.security.scopes import KeyScope

NO_NUL = "^[^\\x00]*$"
# Both: msgspec enforces the first; Litestar documents constraints of list items only from the second.
Argument = Annotated[
    str, msgspec.Meta(max_length=ARG_MAX_CHARS, pattern=NO_NUL), KwargDefinition(max_length=ARG_MAX_CHARS, pattern=NO_NUL)
]
Command = Annotated[
    list[Argument],
    msgspec.Meta(
        min_length=1,
        max_length=COMMAND_MAX_ITEMS,
        description=(
            "The program and its arguments, run as they are (no shell: for pipes or `&&` run "
            '`["sh", "-c", "..."]`). It replaces the image\'s CMD; an ENTRYPOINT stays.'
        ),
        examples=[["python", "manage.py", "migrate"]],
    ),
]
TimeoutS = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=86400,
        description=(
            "Seconds before the container is killed (the run then ends `timed_out`); at most the server's "
            "MOORAGE_RUN_TIMEOUT_MAX_S (3600 unless the operator changed it: more is 422). Default MOORAGE_RUN_TIMEOUT_DEFAULT_S (600)."
        ),
    ),
]
Follow = QueryParameter(description="Stream (SSE) until the run ends instead of returning the output so far.", required=False)
# Named apart from the `cron` service dependency; the query parameter is still `cron`.
CronFilter = QueryParameter(name="cron", description="Only the runs this schedule started (its history).", required=False)


class RunIn(msgspec.Struct, forbid_unknown_fields=True):
    command: Command
    timeout_s: TimeoutS | None = None
    # Not "volumes": a body field named like an injected service has its validation errors
    # taken for the service's (a 500 instead of a 422).
    volume_access: Annotated[
        Literal["none", "read-only", "read-write"],
        msgspec.Meta(
            description="How the run mounts the app's volumes, at their paths. read-only (the default): the app's "
            "container is the writer; read-write: for a migration or an init step (e.g. `flask init-db`), best while the "
            "app does not write, since file locks do not cross sandboxes; none: not at all"
        ),
    ] = "read-only"


class RunOut(msgspec.Struct):
    id: str
    app_id: str
    status: Annotated[str, msgspec.Meta(description="queued | running | succeeded | failed | timed_out | cancelled")]
    command: list[str]
    timeout_s: int
    trigger: Annotated[str, msgspec.Meta(description="api, or cron:<schedule name> for a run a schedule started")]
    volume_access: Annotated[str, msgspec.Meta(description="how it mounts the app's volumes: none | read-only | read-write")]
    release: Annotated[str | None, msgspec.Meta(description="the release whose image it runs (v1, v2, ...)")]
    image: str
    exit_code: Annotated[int | None, msgspec.Meta(description="the command's exit status; null when killed or never started")]
    reason: Annotated[str | None, msgspec.Meta(description="why it failed, timed out or was cancelled")]
    output_truncated: Annotated[bool, msgspec.Meta(description="the output went past MOORAGE_RUN_OUTPUT_MAX_BYTES and was cut")]
    output_bytes: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    logs_url: str

    @classmethod
    def of(cls, run: Run, release_name: str | None) -> RunOut:
        return cls(
            id=run.id,
            app_id=run.app_id,
            status=run.status,
            command=list(run.command),
            timeout_s=run.timeout_s,
            trigger=run.trigger,
            volume_access=run.volumes,
            release=release_name,
            image=run.image,
            exit_code=run.exit_code,
            reason=run.reason,
            output_truncated=run.output_truncated,
            output_bytes=run.output_bytes,
            cancel_requested=run.cancel_requested,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            logs_url=f"/v1/apps/{run.app_id}/runs/{run.id}/logs",
        )


class RunList(msgspec.Struct):
    items: list[RunOut]
    next_cursor: str | None


def run_out(run: Run, releases: ReleaseService) -> RunOut:
    release = releases.get(run.release_id)
    return RunOut.of(run, release.name if release else None)


def run_status(runs: RunService, run_id: str) -> dict[str, Any] | None:
    """The stream's last event once the run has ended; None while it goes on."""
    run = runs.load(run_id)
    if run is not None and not run.is_terminal:
        return None
    if run is None:
        return {"status": "gone", "reason": None, "exit_code": None, "output_truncated": False}
    return {"status": run.status, "reason": run.reason, "exit_code": run.exit_code, "output_truncated": run.output_truncated}


class RunController(Controller):
    path = "/v1/apps/{app:str}/runs"
    tags = ("runs",)

    @endpoint(
        "POST",
        "/",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Run a command in a new container from the app's current release",
    )
    def create(
        self,
        caller_tenant: NamedDependency[str],
        runs: NamedDependency[RunService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        data: JSONBody[RunIn],
    ) -> Response[RunOut]:
        run = run_out(runs.create(caller_tenant, app, data.command, data.timeout_s, volumes=data.volume_access), releases)
        return Response(run, status_code=202, headers={"Location": f"/v1/apps/{run.app_id}/runs/{run.id}"})

    @endpoint("GET", "/", access=KeyScope.READ, errors=(404,), summary="List an app's runs (newest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        runs: NamedDependency[RunService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
        schedule: Annotated[str | None, CronFilter] = None,
    ) -> RunList:
        page = runs.list(caller_tenant, app, cron=schedule, limit=limit, cursor=cursor)
        return RunList(items=[run_out(r, releases) for r in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{run:str}", access=KeyScope.READ, errors=(404,), summary="Get a run (poll its status)")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        runs: NamedDependency[RunService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        run: FromPath[str],
    ) -> RunOut:
        return run_out(runs.get(caller_tenant, app, run), releases)

    @endpoint(
        "POST",
        "/{run:str}/cancel",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Cancel a run (at once if queued; a running one's container is killed within a second)",
    )
    def cancel(
        self,
        caller_tenant: NamedDependency[str],
        runs: NamedDependency[RunService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        run: FromPath[str],
    ) -> RunOut:
        return run_out(runs.cancel(caller_tenant, app, run), releases)

    @route(
        "GET",
        "/{run:str}/logs",
        access=KeyScope.READ,
        errors=(404,),
        summary="A run's output (text, or SSE with follow=true, ending with its status)",
    )
    async def output(
        self,
        caller_tenant: NamedDependency[str],
        runs: NamedDependency[RunService],
        app: FromPath[str],
        run: FromPath[str],
        follow: Annotated[bool, Follow] = False,
    ) -> Response[str] | ServerSentEvent:
        found = await anyio.to_thread.run_sync(runs.get, caller_tenant, app, run)
        path = Path(found.log_path)
        if not follow:
            text, _ = await anyio.to_thread.run_sync(read_from, path, 0)
            return Response(text, media_type="text/plain; charset=utf-8")
        return ServerSentEvent(follow_log(path, lambda: run_status(runs, found.id)))
