"""``GET /v1/operator/health``: how the platform is doing, for operators. One entry per
component (``control.jobs.operator_health``), each ok | warn | fail with its figure; heavier
than ``/readyz`` (a sandboxed smoke run, cached), so it is not for load balancers."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar.di import NamedDependency

from control.api.endpoints import endpoint
from control.jobs.operator_health import ComponentHealth, HealthReport, OperatorHealth
from control.security.scopes import OPERATOR_ACCESS

Level = Literal["ok", "warn", "fail"]


class ComponentOut(msgspec.Struct):
    status: Annotated[Level, msgspec.Meta(description="ok | warn | fail")]
    figure: Annotated[str, msgspec.Meta(description="what was measured, with its numbers")]
    value: Annotated[float | None, msgspec.Meta(description="the headline number (see each component)")]
    remedy: Annotated[str, msgspec.Meta(description="what to do next; empty when ok")]

    @classmethod
    def of(cls, c: ComponentHealth) -> ComponentOut:
        return cls(c.status, c.figure, c.value, c.remedy)


_DOC = {
    "data_disk": "free space on MOORAGE_DATA_DIR's filesystem; value: free %",
    "docker_disk": "free space on Docker's root (DockerRootDir: images, layers, volumes); value: free %",
    "docker": "the engine at MOORAGE_DOCKER_URL answers; figure: its version; value: answer seconds",
    "sandbox_smoke": "a tiny container under MOORAGE_DOCKER_RUNTIME (runsc) runs `true`, cached "
    "MOORAGE_HEALTH_SMOKE_CACHE_S; value: seconds",
    "traefik_entrypoints": "Traefik's entrypoints (MOORAGE_TRAEFIK_URL, and 443 with TLS) accept connections; "
    "value: how many do not",
    "traefik_ping": "Traefik's ping (MOORAGE_TRAEFIK_PING_ADDRESS) answers; value: seconds",
    "job_queue": "jobs queued and running, the oldest due job's wait; value: jobs queued",
    "reconciler": "the reconciler's last pass: when, the drift it repaired, its errors; value: seconds since",
    "inference_nodes": "enrolled inference nodes and their health; value: healthy nodes",
    "environment_pool": "the warm pool of environment containers (MOORAGE_ENVIRONMENT_POOL): ready of each image's size, "
    "environments served from it and those that found it empty; value: containers ready",
    "breakers": "circuit breakers (Docker, builders, nodes); value: how many are open",
}


class Components(msgspec.Struct):
    data_disk: Annotated[ComponentOut, msgspec.Meta(description=_DOC["data_disk"])]
    docker_disk: Annotated[ComponentOut, msgspec.Meta(description=_DOC["docker_disk"])]
    docker: Annotated[ComponentOut, msgspec.Meta(description=_DOC["docker"])]
    sandbox_smoke: Annotated[ComponentOut, msgspec.Meta(description=_DOC["sandbox_smoke"])]
    traefik_entrypoints: Annotated[ComponentOut, msgspec.Meta(description=_DOC["traefik_entrypoints"])]
    traefik_ping: Annotated[ComponentOut, msgspec.Meta(description=_DOC["traefik_ping"])]
    job_queue: Annotated[ComponentOut, msgspec.Meta(description=_DOC["job_queue"])]
    reconciler: Annotated[ComponentOut, msgspec.Meta(description=_DOC["reconciler"])]
    inference_nodes: Annotated[ComponentOut, msgspec.Meta(description=_DOC["inference_nodes"])]
    environment_pool: Annotated[ComponentOut, msgspec.Meta(description=_DOC["environment_pool"])]
    breakers: Annotated[ComponentOut, msgspec.Meta(description=_DOC["breakers"])]


class OperatorHealthOut(msgspec.Struct):
    status: Annotated[Level, msgspec.Meta(description="the worst status of the components")]
    checked_at: str
    failing: Annotated[list[str], msgspec.Meta(description="components not ok, worst first")]
    components: Components

    @classmethod
    def of(cls, report: HealthReport) -> OperatorHealthOut:
        rank = {"fail": 0, "warn": 1}
        failing = sorted((c for c in report.components if c.status != "ok"), key=lambda c: rank[c.status])
        by_name = {c.name: ComponentOut.of(c) for c in report.components}
        return cls(report.status, report.checked_at, [c.name for c in failing], Components(**by_name))


@endpoint(
    "GET",
    "/v1/operator/health",
    access=OPERATOR_ACCESS,
    summary="How the platform is doing: disks, Docker, the sandbox, Traefik, jobs, reconciler, nodes, breakers",
    description="Always 200 (the body says what fails); a few seconds at most: it runs a sandboxed container "
    "(cached). `failing` lists the components not ok; each one's `remedy` says what to do.",
    tags=["operator"],
)
def operator_health(operator_health: NamedDependency[OperatorHealth]) -> OperatorHealthOut:
    return OperatorHealthOut.of(operator_health.check())
