"""Liveness and readiness: no authentication, cheap, for supervisors and load balancers.

Readiness is 503 only when the database, the control plane's own store, fails: then no
request can be served. Circuit breakers (Docker, builders, inference nodes) are reported
under ``breakers`` and an open one makes ``status`` "degraded", still 200: those
dependencies are shared by every instance, so taking this one out of rotation would only
stop the reads and tenant/key management that still work; calls that need the broken
dependency answer 503 ``dependency-unavailable`` with Retry-After on their own.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get

from control.api.problems import Problem, problem_responses


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: Annotated[str, msgspec.Meta(description="ready | degraded (a breaker is not closed) | not-ready")]
    checks: dict[str, str]
    breakers: Annotated[dict[str, str], msgspec.Meta(description="breaker name -> closed | half_open | open")] = {}


@get("/healthz", opt={"public": True}, summary="Process is alive", tags=["health"])
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    opt={"public": True},
    summary="Dependencies are reachable",
    tags=["health"],
    responses={503: problem_responses(503)[503]},
    sync_to_thread=True,
)
def readyz(request: Request[Any, Any, Any]) -> Response[Readiness]:
    checks: dict[str, str] = {}
    try:
        request.app.state.services.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"failing: {type(exc).__name__}"
    breakers = {snap.name: snap.state.value for snap in request.app.state.services.breakers.snapshot()}
    ready = all(value == "ok" for value in checks.values())
    degraded = any(state != "closed" for state in breakers.values())
    status = "not-ready" if not ready else "degraded" if degraded else "ready"
    return Response(Readiness(status=status, checks=checks, breakers=breakers), status_code=200 if ready else 503)


__all__ = ["Problem", "healthz", "readyz"]
