"""Liveness and readiness: no authentication, cheap, for supervisors and load balancers.

Readiness is 503 only when the database, the control plane's own store, fails: then no
request can be served. Circuit breakers (Docker, builders, inference nodes) are reported
under ``breakers`` and the ingress (Traefik's entrypoint, ``traefik_url``) under
``checks.router``; an open breaker or an unreachable router makes ``status`` "degraded",
still 200: those dependencies are shared by every instance, so taking this one out of
rotation would only stop the reads and tenant/key management that still work; calls that
need the broken dependency answer 503 ``dependency-unavailable`` with Retry-After on their own.
"""

from __future__ import annotations

import socket
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from control.api.problems import Problem, problem_responses
from control.domain.unit_of_work import Transactions
from control.settings import Settings
from runtime.resilience import BreakerRegistry


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: Annotated[
        str, msgspec.Meta(description="ready | degraded (a breaker is not closed or the router is unreachable) | not-ready")
    ]
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
def readyz(
    store: NamedDependency[Transactions], settings: NamedDependency[Settings], breakers: NamedDependency[BreakerRegistry]
) -> Response[Readiness]:
    checks: dict[str, str] = {}
    try:
        store.ping()
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"failing: {type(exc).__name__}"
    checks["router"] = _router_check(settings.traefik_url)
    states = {snap.name: snap.state.value for snap in breakers.snapshot()}
    ready = checks["database"] == "ok"
    degraded = checks["router"] != "ok" or any(state != "closed" for state in states.values())
    status = "not-ready" if not ready else "degraded" if degraded else "ready"
    return Response(Readiness(status=status, checks=checks, breakers=states), status_code=200 if ready else 503)


def _router_check(url: str, timeout: float = 0.5) -> str:
    """Does Traefik's entrypoint accept connections? Apps are unreachable while it does not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout).close()
    except OSError as exc:
        return f"unreachable: {type(exc).__name__} at {parts.hostname}:{port}; apps cannot be reached until it is back"
    return "ok"


__all__ = ["Problem", "healthz", "readyz"]
