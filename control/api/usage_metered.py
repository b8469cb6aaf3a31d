"""The metered kinds of ``GET /v1/usage`` and ``GET /v1/operator/usage``: compute, storage
and builds, one item per hour (UTC) that has any usage, with totals over the window.

compute: CPU-seconds, memory (the hour's average and peak), network bytes in and out, block
I/O bytes, summed over the tenant's containers (apps, one-off runs, databases). storage: the
bytes held in app volumes, database volumes, images and backups (average and peak per hour;
byte-hours in the totals). builds: build seconds and count per hour, and each deployment's
build seconds (failed and cancelled builds included).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import msgspec

from control.domain import metering as M
from control.domain.metered_usage import MeteredHour, MeteredReport

HOUR_S = 3600.0


class ComputeHourOut(msgspec.Struct, omit_defaults=True):
    hour: Annotated[datetime, msgspec.Meta(description="The hour's start (UTC)")]
    cpu_seconds: float
    memory_average_bytes: Annotated[int, msgspec.Meta(description="Byte-seconds over the hour's seconds (so far)")]
    memory_peak_bytes: Annotated[int, msgspec.Meta(description="The highest reading in the hour (the containers' peaks summed)")]
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: Annotated[int, msgspec.Meta(description="0 under gVisor (its gofer does the file I/O)")]
    block_write_bytes: int
    tenant_id: str | None = None  # operator view only


class ComputeTotalsOut(msgspec.Struct):
    cpu_seconds: float
    memory_byte_hours: Annotated[float, msgspec.Meta(description="Memory held over time: byte-seconds / 3600")]
    memory_peak_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int


class ComputeUsageOut(msgspec.Struct, tag_field="kind", tag="compute"):
    since: date
    until: date
    items: list[ComputeHourOut]
    totals: ComputeTotalsOut


class StorageHeldOut(msgspec.Struct):
    average_bytes: int
    peak_bytes: int


class StorageHourOut(msgspec.Struct, omit_defaults=True):
    hour: datetime
    volumes: StorageHeldOut
    database_volumes: StorageHeldOut
    images: Annotated[StorageHeldOut, msgspec.Meta(description="Each image's size; layers shared by images count in each")]
    backups: StorageHeldOut
    snapshots: Annotated[StorageHeldOut, msgspec.Meta(description="Snapshot files: volume tars, database dumps, manifests")]
    tenant_id: str | None = None


class StorageTotalOut(msgspec.Struct):
    byte_hours: float
    peak_bytes: int


class StorageTotalsOut(msgspec.Struct):
    volumes: StorageTotalOut
    database_volumes: StorageTotalOut
    images: StorageTotalOut
    backups: StorageTotalOut
    snapshots: StorageTotalOut


class StorageUsageOut(msgspec.Struct, tag_field="kind", tag="storage"):
    since: date
    until: date
    items: list[StorageHourOut]
    totals: StorageTotalsOut


class BuildHourOut(msgspec.Struct, omit_defaults=True):
    hour: datetime
    build_seconds: float
    builds: int
    tenant_id: str | None = None


class BuildOut(msgspec.Struct, omit_defaults=True):
    deployment_id: str
    app_id: str
    status: str
    build_seconds: Annotated[float, msgspec.Meta(description="From the build's start to its end, whatever its outcome")]
    created_at: datetime
    tenant_id: str | None = None


class BuildTotalsOut(msgspec.Struct):
    build_seconds: float
    builds: int


class BuildUsageOut(msgspec.Struct, tag_field="kind", tag="builds"):
    since: date
    until: date
    items: list[BuildHourOut]
    totals: BuildTotalsOut
    deployments: Annotated[list[BuildOut], msgspec.Meta(description="The window's builds, oldest first (the newest 500)")]


MeteredOut = ComputeUsageOut | StorageUsageOut | BuildUsageOut


def _tenant(hour: MeteredHour, per_tenant: bool) -> str | None:
    return hour.tenant_id if per_tenant else None


def _compute(report: MeteredReport, per_tenant: bool) -> ComputeUsageOut:
    now = report.now
    items = [
        ComputeHourOut(
            hour=h.hour,
            cpu_seconds=round(h.amounts.get(M.CPU_SECONDS, 0.0), 3),
            memory_average_bytes=int(h.average(M.MEMORY, now)),
            memory_peak_bytes=int(h.peaks.get(M.MEMORY, 0.0)),
            net_rx_bytes=int(h.amounts.get(M.NET_RX_BYTES, 0.0)),
            net_tx_bytes=int(h.amounts.get(M.NET_TX_BYTES, 0.0)),
            block_read_bytes=int(h.amounts.get(M.BLOCK_READ_BYTES, 0.0)),
            block_write_bytes=int(h.amounts.get(M.BLOCK_WRITE_BYTES, 0.0)),
            tenant_id=_tenant(h, per_tenant),
        )
        for h in report.hours
    ]
    totals = ComputeTotalsOut(
        cpu_seconds=round(report.total(M.CPU_SECONDS), 3),
        memory_byte_hours=round(report.total(M.MEMORY) / HOUR_S, 1),
        memory_peak_bytes=int(report.peak(M.MEMORY)),
        net_rx_bytes=int(report.total(M.NET_RX_BYTES)),
        net_tx_bytes=int(report.total(M.NET_TX_BYTES)),
        block_read_bytes=int(report.total(M.BLOCK_READ_BYTES)),
        block_write_bytes=int(report.total(M.BLOCK_WRITE_BYTES)),
    )
    return ComputeUsageOut(report.since, report.until, items, totals)


def _held(h: MeteredHour, resource: str, now: datetime) -> StorageHeldOut:
    return StorageHeldOut(int(h.average(resource, now)), int(h.peaks.get(resource, 0.0)))


def _total(report: MeteredReport, resource: str) -> StorageTotalOut:
    return StorageTotalOut(round(report.total(resource) / HOUR_S, 1), int(report.peak(resource)))


def _storage(report: MeteredReport, per_tenant: bool) -> StorageUsageOut:
    now = report.now
    items = [
        StorageHourOut(
            hour=h.hour,
            volumes=_held(h, M.VOLUMES, now),
            database_volumes=_held(h, M.DATABASE_VOLUMES, now),
            images=_held(h, M.IMAGES, now),
            backups=_held(h, M.BACKUPS, now),
            snapshots=_held(h, M.SNAPSHOTS, now),
            tenant_id=_tenant(h, per_tenant),
        )
        for h in report.hours
    ]
    totals = StorageTotalsOut(
        volumes=_total(report, M.VOLUMES),
        database_volumes=_total(report, M.DATABASE_VOLUMES),
        images=_total(report, M.IMAGES),
        backups=_total(report, M.BACKUPS),
        snapshots=_total(report, M.SNAPSHOTS),
    )
    return StorageUsageOut(report.since, report.until, items, totals)


def _builds(report: MeteredReport, per_tenant: bool) -> BuildUsageOut:
    items = [
        BuildHourOut(
            hour=h.hour,
            build_seconds=round(h.amounts.get(M.BUILD_SECONDS, 0.0), 3),
            builds=round(h.amounts.get(M.BUILDS, 0.0)),
            tenant_id=_tenant(h, per_tenant),
        )
        for h in report.hours
    ]
    deployments = [
        BuildOut(
            b.deployment_id, b.app_id, b.status, round(b.build_seconds, 3), b.created_at, b.tenant_id if per_tenant else None
        )
        for b in report.builds
    ]
    totals = BuildTotalsOut(round(report.total(M.BUILD_SECONDS), 3), round(report.total(M.BUILDS)))
    return BuildUsageOut(report.since, report.until, items, totals, deployments)


def metered_out(report: MeteredReport, *, per_tenant: bool) -> MeteredOut:
    if report.kind == "compute":
        return _compute(report, per_tenant)
    if report.kind == "storage":
        return _storage(report, per_tenant)
    return _builds(report, per_tenant)
