"""Liveness and readiness: no authentication, cheap, for supervisors and load balancers.

Readiness is 503 only when the database, the control plane's own store, fails: then no
request can be served. Everything a deployment needs from the host is checked too
(``runtime.host_check``: the Docker engine, the sandbox runtime registered in it, the base
images, Traefik's entrypoint (``checks.router``) and ping, the route directory), and the
circuit breakers (Docker, builders, inference nodes) are listed under ``breakers``. Any of
those failing makes ``status`` "degraded", still 200: they are shared by every instance, so
taking this one out of rotation would only stop the reads and tenant/key management that
still work; calls that need the broken dependency answer 503 ``dependency-unavailable``
with Retry-After on their own. Each failing check is also one entry of ``problems``, which
says what to do next.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from control.domain.unit_of_work import Transactions
from control.jobs.domains import CustomDomains
from control.jobs.host_targets import host_targets
from control.settings import Settings
from runtime.host_check import OK, Finding, check_host
from runtime.resilience import BreakerRegistry

Status = Literal["ready", "degraded", "not-ready"]
BreakerState = Literal["closed", "half_open", "open"]  # runtime.resilience.BreakerState's values
Component = Literal["database", "docker", "sandbox_runtime", "base_images", "router", "traefik_ping", "route_dir", "certificates"]
_CHECK = "ok, or what is wrong"


class Health(msgspec.Struct):
    status: str


class ReadinessChecks(msgspec.Struct):
    database: Annotated[str, msgspec.Meta(description=f"the control plane's own store: {_CHECK}")]
    docker: Annotated[str, msgspec.Meta(description=f"the Docker engine answers at MOORAGE_DOCKER_URL: {_CHECK}")]
    sandbox_runtime: Annotated[
        str, msgspec.Meta(description=f"MOORAGE_DOCKER_RUNTIME (runsc) is registered in dockerd: {_CHECK}")
    ]
    base_images: Annotated[str, msgspec.Meta(description=f"the images builds and managed databases use are present: {_CHECK}")]
    router: Annotated[
        str, msgspec.Meta(description=f"Traefik's HTTP entrypoint (MOORAGE_TRAEFIK_URL) accepts connections: {_CHECK}")
    ]
    traefik_ping: Annotated[str, msgspec.Meta(description=f"Traefik answers its ping (MOORAGE_TRAEFIK_PING_ADDRESS): {_CHECK}")]
    route_dir: Annotated[str, msgspec.Meta(description=f"MOORAGE_TRAEFIK_DYNAMIC_DIR exists and is writable: {_CHECK}")]
    certificates: Annotated[
        str, msgspec.Meta(description=f"no custom domain's certificate ends within 14 days (it failed to renew): {_CHECK}")
    ]


class ReadinessProblem(msgspec.Struct):
    component: Annotated[Component, msgspec.Meta(description="the check that failed, a key of `checks`")]
    detail: Annotated[str, msgspec.Meta(description="what is wrong")]
    remedy: Annotated[str, msgspec.Meta(description="what to do next")]


class Readiness(msgspec.Struct):
    status: Annotated[
        Status,
        msgspec.Meta(
            description="ready | degraded (a check failed or a breaker is not closed: still 200) | not-ready (the database: 503)"
        ),
    ]
    checks: ReadinessChecks
    problems: Annotated[list[ReadinessProblem], msgspec.Meta(description="one entry per failing check; empty when ready")]
    breakers: Annotated[dict[str, BreakerState], msgspec.Meta(description="breaker name -> closed | half_open | open")]


@get("/healthz", opt={"public": True}, summary="Process is alive", tags=["health"])
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    opt={"public": True},
    summary="Dependencies are reachable",
    description="Each check of the control plane and of the host it deploys to; `problems` says what to do about each "
    "failing one. 503 (same body) only when the database fails.",
    tags=["health"],
    responses={
        503: ResponseSpec(
            data_container=Readiness, description="The database fails: no request can be served", generate_examples=False
        )
    },
    sync_to_thread=True,
)
def readyz(
    store: NamedDependency[Transactions],
    settings: NamedDependency[Settings],
    breakers: NamedDependency[BreakerRegistry],
    custom_domains: NamedDependency[CustomDomains],
) -> Response[Readiness]:
    findings = [_database(store), *check_host(host_targets(settings)), _certificates(custom_domains)]
    states = {snap.name: snap.state.value for snap in breakers.snapshot()}
    ready = findings[0].ok
    degraded = not all(f.ok for f in findings) or any(state != "closed" for state in states.values())
    status: Status = "not-ready" if not ready else "degraded" if degraded else "ready"
    body = Readiness(
        status=status,
        checks=ReadinessChecks(**{f.component: f.detail for f in findings}),
        problems=[ReadinessProblem(cast(Component, f.component), f.detail, f.remedy) for f in findings if not f.ok],
        breakers=cast(dict[str, BreakerState], states),
    )
    return Response(body, status_code=200 if ready else 503)


def _certificates(custom_domains: CustomDomains) -> Finding:
    try:
        ending = custom_domains.expiring()
    except Exception as exc:  # readiness reports, it does not raise
        return Finding("certificates", f"unreadable: {type(exc).__name__}", "check MOORAGE_ACME_STORAGE and the database")
    if not ending:
        return Finding("certificates", OK)
    names = ", ".join(f"{host} ({end:%Y-%m-%d})" for host, end in sorted(ending.items()))
    return Finding(
        "certificates",
        f"{len(ending)} certificate(s) end within 14 days and were not renewed: {names}",
        "read Traefik's log for the ACME error (DNS not pointing here, port 80 closed, a CA rate limit); "
        "the domains keep serving until the certificates end",
    )


def _database(store: Transactions) -> Finding:
    try:
        store.ping()
    except Exception as exc:  # readiness reports, it does not raise
        return Finding(
            "database",
            f"failing: {type(exc).__name__}",
            "check MOORAGE_DATABASE_URL and that the data directory is there and writable; the server log names the error",
        )
    return Finding("database", OK)


__all__ = ["Readiness", "healthz", "readyz"]
