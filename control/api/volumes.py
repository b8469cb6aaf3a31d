"""App volumes (``/v1/apps/{app}/volumes``): storage that keeps an app's files across its
deployments, rollbacks, container restarts and control-plane restarts.

A volume is mounted, writable, at its ``mount_path`` from the app's next container start (a
deployment or a rollback); the container running when it is made does not get it. It goes
only with ``DELETE .../volumes/{volume}`` (409 ``volume-mounted`` while a running container
of the app mounts it, unless ``?force=true``, which stops that container first) or with the
app (``DELETE /v1/apps/{app}?purge=true``). Apps with volumes deploy stop-then-start: one
writer at a time, so a few seconds of 502 during each deploy.

Each volume keeps the mode it was made in (``quota``): ``enforced`` (an ext4 filesystem of
``size_mb``: a write past it fails with ENOSPC in the app) or ``measured`` (its use is
measured; over ``size_mb`` it turns ``full`` and deploys of the app are refused).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control.api.endpoints import endpoint
from control.api.problems import Problem, problem_response
from control.domain.records import StorageOverrides, Volume
from control.domain.volumes import MAX_PATH_CHARS, StorageLimits, VolumeService, VolumeStorageFailed
from control.security.scopes import OPERATOR_ACCESS, KeyScope

MAX_SIZE_MB = 1_048_576  # what the schema allows at all; MOORAGE_VOLUME_MAX_SIZE_MB is the host's limit
Force = QueryParameter(
    description="Also when a running container of the app mounts it: that container is stopped first (the app "
    "is started again without the volume). The data is lost either way.",
    required=False,
)


class VolumeCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=63,
            pattern="^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
            description="DNS label, unique in the app",
            examples=["data"],
        ),
    ]
    mount_path: Annotated[
        str,
        msgspec.Meta(
            min_length=2,
            max_length=MAX_PATH_CHARS,
            pattern="^(/[A-Za-z0-9._-]+)+$",
            description="Absolute, normalised path in the container (not /, not under /proc, /sys, /dev or /etc; "
            "not inside or around another volume of the app)",
            examples=["/app/instance"],
        ),
    ]
    size_mb: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_SIZE_MB, description="Size in MiB, at most MOORAGE_VOLUME_MAX_SIZE_MB", examples=[100]),
    ]


class VolumeOut(msgspec.Struct):
    id: str
    app_id: str
    name: str
    mount_path: str
    size_mb: int
    used_mb: Annotated[
        float | None,
        msgspec.Meta(description="What it held when last measured (MiB; the reconciler measures); null until then"),
    ]
    status: Annotated[
        Literal["ready", "full"],
        msgspec.Meta(description="full: a measured volume over its size (deploys of the app are refused)"),
    ]
    quota: Annotated[
        Literal["enforced", "measured"],
        msgspec.Meta(description="enforced: writes past size_mb fail with ENOSPC; measured: its use is measured, not bounded"),
    ]
    measured_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, v: Volume) -> VolumeOut:
        used = None if v.used_bytes is None else round(v.used_bytes / 2**20, 2)
        return cls(
            v.id,
            v.app_id,
            v.name,
            v.mount_path,
            v.size_mb,
            used,
            v.status,  # type: ignore[arg-type]
            v.quota,  # type: ignore[arg-type]
            v.measured_at,
            v.created_at,
        )


class VolumeList(msgspec.Struct):
    items: list[VolumeOut]


def storage_failed_handler(request: Request[Any, Any, Any], exc: VolumeStorageFailed) -> Response[Problem]:
    return problem_response(request, exc.status, exc.code, exc.detail, title=exc.title, headers={"Retry-After": "30"})


class VolumeController(Controller):
    path = "/v1/apps/{app:str}/volumes"
    tags = ("volumes",)
    exception_handlers = {VolumeStorageFailed: storage_failed_handler}  # noqa: RUF012 (Litestar's own attribute)

    @endpoint(
        "POST",
        access=KeyScope.DEPLOY,
        errors=(404, 503),
        status_code=201,
        summary="Create a volume (mounted from the app's next deployment)",
    )
    def create(
        self,
        caller_tenant: NamedDependency[str],
        volumes: NamedDependency[VolumeService],
        app: FromPath[str],
        data: JSONBody[VolumeCreate],
    ) -> VolumeOut:
        """409 `name-taken`; 422 `quota-exceeded` (the tenant's storage limits) or naming the field
        for a bad name, path or size. Nothing is made when it is refused."""
        return VolumeOut.of(volumes.create(caller_tenant, app, data.name, data.mount_path, data.size_mb))

    @endpoint("GET", access=KeyScope.READ, errors=(404,), summary="List an app's volumes")
    def list(
        self, caller_tenant: NamedDependency[str], volumes: NamedDependency[VolumeService], app: FromPath[str]
    ) -> VolumeList:
        return VolumeList([VolumeOut.of(v) for v in volumes.list(caller_tenant, app)])

    @endpoint("GET", "/{volume:str}", access=KeyScope.READ, errors=(404,), summary="Get a volume by name or id")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        volumes: NamedDependency[VolumeService],
        app: FromPath[str],
        volume: FromPath[str],
    ) -> VolumeOut:
        return VolumeOut.of(volumes.get(caller_tenant, app, volume))

    @endpoint(
        "DELETE",
        "/{volume:str}",
        access=KeyScope.DEPLOY,
        errors=(404,),
        summary="Delete a volume and its data (409 volume-mounted while in use, unless ?force=true)",
    )
    def remove(
        self,
        caller_tenant: NamedDependency[str],
        volumes: NamedDependency[VolumeService],
        app: FromPath[str],
        volume: FromPath[str],
        force: Annotated[bool, Force] = False,
    ) -> None:
        volumes.delete(caller_tenant, app, volume, force=force)


# -- operators: per-tenant storage quotas ------------------------------------------------------


class StorageLimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A full replacement of the tenant's overrides: a field left out (or null) returns to the default."""

    max_volumes: Annotated[int, msgspec.Meta(ge=0, description="Volumes of all the tenant's apps together")] | None = None
    max_total_mb: Annotated[int, msgspec.Meta(ge=0, description="size_mb of all the tenant's volumes together")] | None = None
    max_snapshot_mb: Annotated[int, msgspec.Meta(ge=0, description="MiB of all the tenant's snapshot files together")] | None = (
        None
    )


class StorageLimitsOut(msgspec.Struct):
    tenant_id: str
    max_volumes: int
    max_total_mb: int
    volumes: Annotated[int, msgspec.Meta(description="Volumes the tenant has now")]
    total_mb: Annotated[int, msgspec.Meta(description="Their size_mb together")]
    max_snapshot_mb: int
    snapshot_mb: Annotated[float, msgspec.Meta(description="MiB the tenant's snapshots hold now")]
    overrides: StorageLimitsIn

    @classmethod
    def of(cls, tenant_id: str, limits: StorageLimits) -> StorageLimitsOut:
        o = limits.overrides
        return cls(
            tenant_id,
            limits.max_volumes,
            limits.max_total_mb,
            limits.volumes,
            limits.total_mb,
            limits.max_snapshot_mb,
            round(limits.snapshot_bytes / 2**20, 2),
            StorageLimitsIn(o.max_volumes, o.max_total_mb, o.max_snapshot_mb),
        )


@endpoint(
    "GET",
    "/v1/tenants/{tenant_id:str}/storage-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Get a tenant's storage quotas (volumes, snapshots)",
    tags=["tenants (operator)"],
)
def get_storage_limits(volumes: NamedDependency[VolumeService], tenant_id: FromPath[str]) -> StorageLimitsOut:
    return StorageLimitsOut.of(tenant_id, volumes.limits(tenant_id))


@endpoint(
    "PUT",
    "/v1/tenants/{tenant_id:str}/storage-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Set a tenant's storage quotas (volumes, snapshots)",
    tags=["tenants (operator)"],
)
def put_storage_limits(
    volumes: NamedDependency[VolumeService], tenant_id: FromPath[str], data: JSONBody[StorageLimitsIn]
) -> StorageLimitsOut:
    """Applies to the next volume created; existing volumes are never removed by a lower limit."""
    limits = volumes.set_limits(tenant_id, StorageOverrides(data.max_volumes, data.max_total_mb, data.max_snapshot_mb))
    return StorageLimitsOut.of(tenant_id, limits)


STORAGE_LIMIT_ROUTES = [get_storage_limits, put_storage_limits]
