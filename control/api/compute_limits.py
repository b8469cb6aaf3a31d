"""Operators: per-tenant compute quotas (``GET/PUT /v1/tenants/{id}/compute-limits``).

What a tenant may hold: apps, and for the apps that run, replicas, CPU and memory (each
container counted at the limits Docker gives it), plus build minutes per UTC day. A create,
scale-up or deploy past one is 422 ``quota-exceeded`` naming the limit, the use and this
endpoint; nothing is made.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import endpoint
from control.domain.compute import ComputeLimits, ComputeQuota
from control.domain.records import ComputeOverrides
from control.security.scopes import OPERATOR_ACCESS


class ComputeLimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A full replacement of the tenant's overrides: a field left out (or null) returns to the default."""

    max_apps: Annotated[int, msgspec.Meta(ge=0, description="Apps, deployed or not")] | None = None
    max_replicas: Annotated[int, msgspec.Meta(ge=0, description="Containers of all running apps together")] | None = None
    max_cpu: Annotated[float, msgspec.Meta(ge=0, description="CPUs of all running apps' containers together")] | None = None
    max_memory_mb: Annotated[int, msgspec.Meta(ge=0, description="Memory of all running apps' containers (MiB)")] | None = None
    build_minutes_per_day: Annotated[int, msgspec.Meta(ge=0, description="Build time per UTC day (minutes)")] | None = None
    max_environments: Annotated[int, msgspec.Meta(ge=0, description="Environments (sandboxes) at once")] | None = None


class RunningAppUse(msgspec.Struct):
    app: str
    replicas: int


class ComputeUsageOut(msgspec.Struct):
    apps: Annotated[int, msgspec.Meta(description="Apps the tenant has")]
    replicas: Annotated[int, msgspec.Meta(description="Containers its running apps hold")]
    cpu: Annotated[float, msgspec.Meta(description="replicas x container_cpu, plus the environments' CPU")]
    memory_mb: Annotated[int, msgspec.Meta(description="replicas x container_memory_mb, plus the environments' memory")]
    build_minutes_today: Annotated[float, msgspec.Meta(description="Time its builds took since 00:00 UTC")]
    running: Annotated[
        list[RunningAppUse], msgspec.Meta(description="Apps holding compute: a current release or a deploy in flight")
    ]
    environments: Annotated[int, msgspec.Meta(description="Environments (sandboxes) the tenant has")] = 0
    environment_cpu: Annotated[float, msgspec.Meta(description="CPU its environments hold (in cpu)")] = 0.0
    environment_memory_mb: Annotated[int, msgspec.Meta(description="Memory its environments hold (in memory_mb)")] = 0


class ComputeLimitsOut(msgspec.Struct):
    tenant_id: str
    max_apps: int
    max_replicas: int
    max_cpu: float
    max_memory_mb: int
    build_minutes_per_day: int
    max_environments: int
    container_cpu: Annotated[float, msgspec.Meta(description="Docker's CPU limit of each app container")]
    container_memory_mb: Annotated[int, msgspec.Meta(description="Docker's memory limit of each app container")]
    usage: ComputeUsageOut
    overrides: ComputeLimitsIn

    @classmethod
    def of(cls, tenant_id: str, limits: ComputeLimits) -> ComputeLimitsOut:
        o, u = limits.overrides, limits.usage
        return cls(
            tenant_id=tenant_id,
            max_apps=limits.max_apps,
            max_replicas=limits.max_replicas,
            max_cpu=limits.max_millicpus / 1000,
            max_memory_mb=limits.max_memory_mb,
            build_minutes_per_day=limits.build_minutes_per_day,
            max_environments=limits.max_environments,
            container_cpu=limits.container_millicpus / 1000,
            container_memory_mb=limits.container_memory_mb,
            usage=ComputeUsageOut(
                apps=u.apps,
                replicas=u.replicas,
                cpu=u.millicpus / 1000,
                memory_mb=u.memory_mb,
                build_minutes_today=u.build_minutes_today,
                running=[RunningAppUse(name, replicas) for name, replicas in u.running],
                environments=u.environments,
                environment_cpu=u.environment_millicpus / 1000,
                environment_memory_mb=u.environment_memory_mb,
            ),
            overrides=ComputeLimitsIn(
                o.max_apps,
                o.max_replicas,
                None if o.max_millicpus is None else o.max_millicpus / 1000,
                o.max_memory_mb,
                o.build_minutes_per_day,
                o.max_environments,
            ),
        )


@endpoint(
    "GET",
    "/v1/tenants/{tenant_id:str}/compute-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Get a tenant's compute quotas (apps, replicas, CPU, memory, build minutes) and its use",
    tags=["tenants (operator)"],
)
def get_compute_limits(compute: NamedDependency[ComputeQuota], tenant_id: FromPath[str]) -> ComputeLimitsOut:
    return ComputeLimitsOut.of(tenant_id, compute.limits(tenant_id))


@endpoint(
    "PUT",
    "/v1/tenants/{tenant_id:str}/compute-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Set a tenant's compute quotas",
    tags=["tenants (operator)"],
)
def put_compute_limits(
    compute: NamedDependency[ComputeQuota], tenant_id: FromPath[str], data: JSONBody[ComputeLimitsIn]
) -> ComputeLimitsOut:
    """Applies to the next app, scale-up or deploy; what runs is never stopped by a lower limit."""
    overrides = ComputeOverrides(
        data.max_apps,
        data.max_replicas,
        None if data.max_cpu is None else round(data.max_cpu * 1000),
        data.max_memory_mb,
        data.build_minutes_per_day,
        data.max_environments,
    )
    return ComputeLimitsOut.of(tenant_id, compute.set_limits(tenant_id, overrides))


COMPUTE_LIMIT_ROUTES = [get_compute_limits, put_compute_limits]
