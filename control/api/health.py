"""Liveness and readiness: no authentication, cheap, for supervisors and load balancers."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from control.api.problems import Problem, problem_responses


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]


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
    ready = all(value == "ok" for value in checks.values())
    return Response(
        Readiness(status="ready" if ready else "not-ready", checks=checks),
        status_code=200 if ready else 503,
    )


__all__ = ["Problem", "healthz", "readyz"]
