"""Log streams: a deployment's build log and an app's runtime log, as text or SSE.

``follow=true`` answers ``text/event-stream``: ``event: log`` per line, a keep-alive
comment every 15 s while nothing happens, and (build logs) a final ``event: status`` whose
data is ``{"status", "reason", "release"}``. Streams carry their own keep-alive; the
server has no global write deadline that would cut them."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import docker.errors
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from control.api.endpoints import route
from control.api.streaming import KEEPALIVE_S, follow_log, keepalive
from control.domain.deployments import DeploymentService
from control.domain.errors import Conflict
from control.domain.releases import ReleaseService
from control.jobs.build import read_from
from control.jobs.runtime_docker import DockerAppRuntime
from control.security.scopes import KeyScope

Follow = QueryParameter(description="Stream (SSE) until the end instead of returning the text so far.", required=False)
Tail = QueryParameter(ge=0, le=10000, description="Runtime log lines from before now to start with.", required=False)


def _build_status(
    deployments: DeploymentService, releases: ReleaseService, deployment_id: str
) -> Callable[[], dict[str, Any] | None]:
    def final() -> dict[str, Any] | None:
        deployment = deployments.load(deployment_id)
        if deployment is not None and not deployment.is_terminal:
            return None
        release = releases.get(deployment.release_id) if deployment and deployment.release_id else None
        return {
            "status": deployment.status if deployment else "gone",
            "reason": deployment.reason if deployment else None,
            "release": release.name if release else None,
        }

    return final


async def _container_events(runtime: DockerAppRuntime, container_id: str, tail: int) -> AsyncIterator[ServerSentEventMessage]:
    """A thread reads Docker's log stream (blocking) into a queue; closing the stream when
    the client goes away unblocks that thread."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    opened = await anyio.to_thread.run_sync(runtime.containers._log_stream, container_id, tail)
    stream = opened  # what docker answers a follow: closable, which ends the pump
    closed = threading.Event()

    def pump() -> None:
        buf = b""
        try:
            for chunk in stream:
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for line in complete:
                    loop.call_soon_threadsafe(lines.put_nowait, line.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 (closed under us: the client went away, or the container did)
            pass
        finally:
            if not closed.is_set():
                loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=pump, name="moorage-log-pump", daemon=True).start()
    try:
        while True:
            try:
                line = await asyncio.wait_for(lines.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield keepalive()
                continue
            if line is None:
                yield ServerSentEventMessage(data=json.dumps({"status": "stream-ended"}), event="status")
                return
            yield ServerSentEventMessage(data=line, event="log")
    finally:
        closed.set()
        stream.close()


class LogController(Controller):
    path = "/v1/apps/{app:str}"
    tags = ("logs",)

    @route(
        "GET",
        "/deployments/{deployment:str}/logs",
        access=KeyScope.READ,
        errors=(404,),
        summary="A deployment's build log (text, or SSE with follow=true)",
    )
    async def build_log(
        self,
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        deployment: FromPath[str],
        follow: Annotated[bool, Follow] = False,
    ) -> Response[str] | ServerSentEvent:
        found = await anyio.to_thread.run_sync(deployments.get, caller_tenant, app, deployment)
        path = Path(found.log_path or deployments.log_path(found.id))
        if not follow:
            text, _ = await anyio.to_thread.run_sync(read_from, path, 0)
            return Response(text, media_type="text/plain; charset=utf-8")
        return ServerSentEvent(follow_log(path, _build_status(deployments, releases, found.id)))

    @route(
        "GET", "/logs", access=KeyScope.READ, errors=(404, 503), summary="The running app's log (text, or SSE with follow=true)"
    )
    async def runtime_log(
        self,
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        app_runtime: NamedDependency[DockerAppRuntime],
        app: FromPath[str],
        follow: Annotated[bool, Follow] = False,
        tail: Annotated[int, Tail] = 100,
    ) -> Response[str] | ServerSentEvent:
        target = await anyio.to_thread.run_sync(
            partial(deployments.app, caller_tenant, app, previews=True)
        )  # read-only: previews too
        desired = await anyio.to_thread.run_sync(releases.desired, target.id)
        if not desired:
            raise Conflict(f"App '{target.name}' has no running release; deploy it first.", code="app-not-running")
        container_id = desired[0].container_id
        try:
            if not follow:
                lines = await anyio.to_thread.run_sync(app_runtime.containers.logs, container_id, tail)
                return Response("\n".join(lines) + ("\n" if lines else ""), media_type="text/plain; charset=utf-8")
            return ServerSentEvent(_container_events(app_runtime, container_id, tail))
        except docker.errors.NotFound:
            raise Conflict(
                f"App '{target.name}' has no container right now; the reconciler is recreating it. Retry shortly.",
                code="app-not-running",
            ) from None
