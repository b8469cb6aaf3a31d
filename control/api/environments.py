"""Environments (sandboxes, ``/v1/environments``): leased containers to exec commands in,
push files to and pull results from.

``POST`` answers 201 once the container runs (about a second under gVisor), with the
environment ready to exec; 422 ``quota-exceeded`` past the tenant's compute quotas
(``max_environments``, ``max_cpu``, ``max_memory_mb``), 422 ``environment-start-failed`` when
the image cannot idle, 409 ``no-release`` for ``from_app`` of an app never deployed. The
lease ends ``lease_s`` after creation; ``POST .../renew`` extends it from now, never past
``lifetime_ends_at``. An environment whose lease has passed is 404 and is removed by the
reconciler within its interval.

``POST .../exec`` runs a command and answers when it ends: ``{"exit_code", "stdout",
"stderr", "truncated", "timed_out", "duration_ms", "reason"}``; stdout and stderr are each
kept up to ``MOORAGE_ENVIRONMENT_OUTPUT_MAX_BYTES``, then cut with a ``[stdout cut at N
bytes]`` line. With ``?stream=true`` it answers SSE instead: ``event: stdout`` / ``event:
stderr`` (each ``data`` a JSON string of the text), then ``event: exit`` with the same object
less stdout and stderr. ``PUT .../files?path=`` unpacks a tar.gz body there; ``GET
.../files?path=`` answers a tar.gz of the file or directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from control.api.deployments import GZIP_TYPES
from control.api.endpoints import Cursor, Limit, endpoint, route
from control.api.problems import Problem, problem_response
from control.api.runs import Command
from control.api.streaming import KEEPALIVE_S, keepalive
from control.domain.environments import WORKSPACE
from control.domain.records import Environment
from control.jobs.environments import ExecResult, Sandboxes
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.settings import Settings
from runtime.archive import ArchiveRejected

ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
STDIN_MAX_BYTES = 1024 * 1024
Path_ = QueryParameter(description=f"An absolute path in the environment (default {WORKSPACE})", required=False, max_length=1024)
Stream = QueryParameter(description="Answer SSE as the command runs (event: stdout / stderr / exit).", required=False)


class EnvironmentIn(msgspec.Struct, forbid_unknown_fields=True):
    image: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=200,
                description="A platform image (MOORAGE_ENVIRONMENT_IMAGES, e.g. moorage/python:3-bookworm); or name from_app",
            ),
        ]
        | None
    ) = None
    from_app: (
        Annotated[
            str, msgspec.Meta(max_length=100, description="An app (name or id) whose current release's image to start from")
        ]
        | None
    ) = None
    with_app_env: Annotated[
        bool, msgspec.Meta(description="With from_app: that app's env vars and database links in the environment")
    ] = False
    lease_s: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=86400,
                description="Seconds until it is removed (default MOORAGE_ENVIRONMENT_LEASE_DEFAULT_S, 900; at most MOORAGE_ENVIRONMENT_LEASE_MAX_S, 3600)",
            ),
        ]
        | None
    ) = None
    cpu: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                le=64,
                description="CPUs (default MOORAGE_ENVIRONMENT_CPU_DEFAULT, 1.0; at most MOORAGE_ENVIRONMENT_CPU_MAX)",
            ),
        ]
        | None
    ) = None
    memory_mb: (
        Annotated[
            int,
            msgspec.Meta(
                ge=64,
                le=1_048_576,
                description="Memory in MiB, no swap (default 1024; at most MOORAGE_ENVIRONMENT_MEMORY_MB_MAX)",
            ),
        ]
        | None
    ) = None


class RenewIn(msgspec.Struct, forbid_unknown_fields=True):
    lease_s: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=86400,
                description="The lease ends this many seconds from now (at most MOORAGE_ENVIRONMENT_LEASE_MAX_S), never past lifetime_ends_at",
            ),
        ]
        | None
    ) = None


class ExecIn(msgspec.Struct, forbid_unknown_fields=True):
    command: Command
    timeout_s: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=86400,
                description="Seconds before it is killed with every process it started (timed_out: true); "
                "default 300, at most MOORAGE_ENVIRONMENT_EXEC_TIMEOUT_MAX_S (3600)",
            ),
        ]
        | None
    ) = None
    stdin: (
        Annotated[str, msgspec.Meta(max_length=STDIN_MAX_BYTES, description="Text written to its stdin, then closed")] | None
    ) = None
    workdir: (
        Annotated[str, msgspec.Meta(max_length=1024, description=f"Absolute working directory (default {WORKSPACE})")] | None
    ) = None
    env: Annotated[
        dict[Annotated[str, msgspec.Meta(pattern=ENV_NAME, max_length=128)], Annotated[str, msgspec.Meta(max_length=32768)]],
        msgspec.Meta(max_length=128, description="Environment variables for this command only"),
    ] = {}


class EnvironmentOut(msgspec.Struct):
    id: str
    status: Annotated[str, msgspec.Meta(description="starting | ready")]
    image: str
    from_app: Annotated[str, msgspec.Meta(description="the app id it was started from, if any")] | None
    release_id: str | None
    with_app_env: bool
    cpu: float
    memory_mb: int
    lease_expires_at: Annotated[datetime, msgspec.Meta(description="when it is removed unless renewed")]
    lifetime_ends_at: Annotated[datetime, msgspec.Meta(description="no renewal goes past this")]
    created_at: datetime
    exec_url: str
    files_url: str

    @classmethod
    def of(cls, env: Environment) -> EnvironmentOut:
        return cls(
            id=env.id,
            status=env.status,
            image=env.image,
            from_app=env.app_id,
            release_id=env.release_id,
            with_app_env=env.with_app_env,
            cpu=env.millicpus / 1000,
            memory_mb=env.memory_mb,
            lease_expires_at=env.lease_expires_at,
            lifetime_ends_at=env.lifetime_ends_at,
            created_at=env.created_at,
            exec_url=f"/v1/environments/{env.id}/exec",
            files_url=f"/v1/environments/{env.id}/files",
        )


class EnvironmentList(msgspec.Struct):
    items: list[EnvironmentOut]
    next_cursor: str | None


class ExecOut(msgspec.Struct):
    exit_code: Annotated[int, msgspec.Meta(description="the command's exit status; null when it was killed or cut off")] | None
    stdout: str
    stderr: str
    truncated: Annotated[
        bool, msgspec.Meta(description="stdout or stderr went past MOORAGE_ENVIRONMENT_OUTPUT_MAX_BYTES and was cut")
    ]
    timed_out: bool
    duration_ms: int
    reason: (
        Annotated[str, msgspec.Meta(description="why there is no exit code: its timeout, or its environment deleted or expired")]
        | None
    )

    @classmethod
    def of(cls, result: ExecResult) -> ExecOut:
        return cls(**asdict(result))


class FilesOut(msgspec.Struct):
    path: str
    bytes: Annotated[int, msgspec.Meta(description="bytes unpacked")]


def _exit_event(result: ExecResult) -> ServerSentEventMessage:
    body = {k: v for k, v in asdict(result).items() if k not in ("stdout", "stderr")}
    return ServerSentEventMessage(data=json.dumps(body), event="exit")


async def _exec_events(sandboxes: Sandboxes, tenant_id: str, env_id: str, data: ExecIn) -> AsyncIterator[ServerSentEventMessage]:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    stop = threading.Event()

    def forward(stream: str, text: str) -> None:
        loop.call_soon_threadsafe(chunks.put_nowait, (stream, text))

    def run() -> ExecResult:
        return sandboxes.exec(
            tenant_id,
            env_id,
            data.command,
            timeout_s=data.timeout_s,
            stdin=None if data.stdin is None else data.stdin.encode(),
            workdir=data.workdir,
            env=data.env,
            forward=forward,
            stop=stop,
        )

    task = asyncio.ensure_future(anyio.to_thread.run_sync(run))
    try:
        while True:
            try:
                stream, text = await asyncio.wait_for(chunks.get(), timeout=0.2 if task.done() else KEEPALIVE_S)
                yield ServerSentEventMessage(data=json.dumps(text), event=stream)
                continue
            except TimeoutError:
                if not task.done():
                    yield keepalive()
                    continue
            if chunks.empty():
                break
        try:
            result = task.result()
        except Exception as exc:  # noqa: BLE001 (the answer has started: the failure is its last event)
            detail = getattr(exc, "detail", None) or f"internal error ({type(exc).__name__})"
            yield ServerSentEventMessage(data=json.dumps({"detail": detail}), event="error")
            return
        yield _exit_event(result)
    finally:
        stop.set()  # the client went away: the command is killed


class EnvironmentController(Controller):
    path = "/v1/environments"
    tags = ("environments",)

    @endpoint(
        "POST",
        "/",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=201,
        summary="Create an environment (a leased sandbox container to exec in); 201 once it is ready",
        description="422 `quota-exceeded` past max_environments, max_cpu or max_memory_mb; 422 `environment-start-failed` "
        "when the image cannot idle; 409 `no-release` for from_app of an app never deployed. Nothing is kept on failure.",
    )
    def create(
        self, caller_tenant: NamedDependency[str], environments: NamedDependency[Sandboxes], data: JSONBody[EnvironmentIn]
    ) -> Response[EnvironmentOut]:
        env = environments.create(
            caller_tenant,
            image=data.image,
            from_app=data.from_app,
            with_app_env=data.with_app_env,
            lease_s=data.lease_s,
            cpu=data.cpu,
            memory_mb=data.memory_mb,
        )
        return Response(EnvironmentOut.of(env), status_code=201, headers={"Location": f"/v1/environments/{env.id}"})

    @endpoint("GET", "/", access=KeyScope.READ, summary="List environments (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        environments: NamedDependency[Sandboxes],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> EnvironmentList:
        page = environments.environments.list(caller_tenant, limit=limit, cursor=cursor)
        return EnvironmentList(items=[EnvironmentOut.of(e) for e in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{env:str}", access=KeyScope.READ, errors=(404,), summary="Get an environment (its lease)")
    def get(
        self, caller_tenant: NamedDependency[str], environments: NamedDependency[Sandboxes], env: FromPath[str]
    ) -> EnvironmentOut:
        return EnvironmentOut.of(environments.environments.get(caller_tenant, env))

    @endpoint(
        "DELETE",
        "/{env:str}",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=204,
        summary="Delete an environment: its container is removed (a command running in it is killed)",
    )
    def delete(self, caller_tenant: NamedDependency[str], environments: NamedDependency[Sandboxes], env: FromPath[str]) -> None:
        environments.delete(caller_tenant, env)

    @endpoint(
        "POST",
        "/{env:str}/renew",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=200,
        summary="Extend an environment's lease from now (never past lifetime_ends_at: 409 lifetime-reached there)",
    )
    def renew(
        self,
        caller_tenant: NamedDependency[str],
        environments: NamedDependency[Sandboxes],
        env: FromPath[str],
        data: JSONBody[RenewIn],
    ) -> EnvironmentOut:
        return EnvironmentOut.of(environments.environments.renew(caller_tenant, env, data.lease_s))

    @route(
        "POST",
        "/{env:str}/exec",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=200,
        summary="Run a command in an environment (JSON when it ends, or SSE with stream=true)",
        description="409 `environment-starting` while it starts, 409 `exec-refused` when the command cannot start. A "
        "command past timeout_s is killed with every process it started (timed_out: true); one cut off by a DELETE or "
        "the lease running out has exit_code null and a reason.",
    )
    async def exec(
        self,
        caller_tenant: NamedDependency[str],
        environments: NamedDependency[Sandboxes],
        env: FromPath[str],
        data: JSONBody[ExecIn],
        stream: Annotated[bool, Stream] = False,
    ) -> Response[ExecOut] | ServerSentEvent:
        if stream:
            await anyio.to_thread.run_sync(
                environments.check_exec, caller_tenant, env, data.command, data.timeout_s, data.workdir
            )
            return ServerSentEvent(_exec_events(environments, caller_tenant, env, data))
        result = await anyio.to_thread.run_sync(
            lambda: environments.exec(
                caller_tenant,
                env,
                data.command,
                timeout_s=data.timeout_s,
                stdin=None if data.stdin is None else data.stdin.encode(),
                workdir=data.workdir,
                env=data.env,
            )
        )
        return Response(ExecOut.of(result))

    @route(
        "PUT",
        "/{env:str}/files",
        access=KeyScope.DEPLOY,
        errors=(404, 413, 415),
        request_max_body_size=None,
        summary="Unpack a tar.gz body (application/gzip) at path in an environment",
        description="Hardened as deployment uploads are: absolute names, `..`, links leaving the tree, devices and "
        "decompression bombs are refused (422 `archive-rejected`), nothing written. 413 past MOORAGE_ENVIRONMENT_UPLOAD_MAX_BYTES.",
    )
    async def push(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        environments: NamedDependency[Sandboxes],
        settings: NamedDependency[Settings],
        env: FromPath[str],
        path: Annotated[str, Path_] = WORKSPACE,
    ) -> FilesOut | Response[Problem]:
        limit = environments.config.upload_max_bytes
        await anyio.to_thread.run_sync(environments.environments.get, caller_tenant, env)  # 404 before the body
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in GZIP_TYPES:
            return problem_response(
                request, 415, "unsupported-media-type", "Send a tar.gz body with Content-Type: application/gzip."
            )
        too_large = f"Uploads are at most {limit} bytes (MOORAGE_ENVIRONMENT_UPLOAD_MAX_BYTES); push less at a time."
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return problem_response(request, 413, "payload-too-large", too_large)
        uploads = settings.data_dir / "environments" / "uploads"  # the data dir's disk, as deployment uploads
        await anyio.to_thread.run_sync(lambda: uploads.mkdir(mode=0o700, parents=True, exist_ok=True))
        scratch = Path(tempfile.mkdtemp(prefix="push-", dir=uploads))
        try:
            upload, size = scratch / "upload.tar.gz", 0
            async with await anyio.open_file(upload, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return problem_response(request, 413, "payload-too-large", too_large)
                    await f.write(chunk)
            try:
                unpacked = await anyio.to_thread.run_sync(environments.push, caller_tenant, env, path, upload)
            except ArchiveRejected as exc:
                detail = f"The archive was refused: {exc}. Nothing was written; fix the archive and push again."
                return problem_response(request, 422, "archive-rejected", detail)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
        return FilesOut(path=path, bytes=unpacked)

    @endpoint(
        "GET",
        "/{env:str}/files",
        access=KeyScope.DEPLOY,
        errors=(404, 409),
        summary="Download a file or directory of an environment as tar.gz",
        description="404 `path-not-found` when it is not there; 422 `download-too-large` past MOORAGE_ENVIRONMENT_DOWNLOAD_MAX_BYTES.",
        media_type="application/gzip",
    )
    def pull(
        self,
        caller_tenant: NamedDependency[str],
        environments: NamedDependency[Sandboxes],
        env: FromPath[str],
        path: Annotated[str, Path_] = WORKSPACE,
    ) -> Response[bytes]:
        body = environments.pull(caller_tenant, env, path)
        name = (path.rstrip("/").rsplit("/", 1)[-1] or "root") + ".tar.gz"
        return Response(body, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'})
