"""The metering sampler: a background thread that reads every running container's counters
(apps, one-off runs, databases) on the app runtime port each ``interval_s``, and measures
each tenant's storage each ``storage_interval_s``; what it finds is rolled up into hourly
rows (``control.domain.metering``) and stored in one write per pass.

Builds are metered by the build step itself (``record_build``): it knows when a build
started and ended. Usage between a container's last reading and its end is not seen (at
most one interval's worth); a container running before the sampler started (a control
plane restart) counts from the first reading on, never from its start again.

It also keeps what ``/metrics`` shows per tenant: the all-time counters (loaded from the
store once, then added to) and the latest memory and storage readings.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from control.domain import metering as M
from control.domain.metered_usage import MeteringService
from control.jobs.build import tenant_repository
from control.jobs.runtime_port import AppRuntime, ContainerUsage

log = structlog.get_logger("moorage.metering")


@dataclass(frozen=True)
class StorageSources:
    """Where each kind of storage is counted, per tenant id."""

    volumes: Callable[[], Mapping[str, int]]  # app volumes: the reconciler's last measurement
    database_of: Callable[[str], str | None]  # database id -> its tenant id (None: not ours any more)
    backups_dir: Path  # <data_dir>/backups/<tenant id>/<database id>/<file>
    snapshots_dir: Path | None = None  # <data_dir>/snapshots/<tenant id>/<snapshot id>/<file>


@dataclass
class Live:
    """What ``/metrics`` reads: all-time counters and the latest gauges, by tenant id."""

    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    storage: dict[tuple[str, str], float] = field(default_factory=dict)  # (tenant, category) -> bytes


def _epoch(rfc3339: str) -> float | None:
    try:  # dockerd: nanoseconds and a Z; fromisoformat takes at most microseconds
        head, _, rest = rfc3339.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{rest[:6] or '0'}+00:00").timestamp()
    except ValueError:
        return None


def _reading(usage: ContainerUsage, tenant_id: str, at: float) -> M.Reading:
    return M.Reading(
        container_id=usage.container_id,
        tenant_id=tenant_id,
        started_at=usage.started_at,
        at=at,
        counters={
            M.CPU_SECONDS: usage.cpu_seconds,
            M.NET_RX_BYTES: float(usage.net_rx_bytes),
            M.NET_TX_BYTES: float(usage.net_tx_bytes),
            M.BLOCK_READ_BYTES: float(usage.block_read_bytes),
            M.BLOCK_WRITE_BYTES: float(usage.block_write_bytes),
        },
        memory_bytes=usage.memory_bytes,
        memory_peak_bytes=usage.memory_peak_bytes,
        started_epoch=_epoch(usage.started_at),
    )


def tree_bytes_by_child(root: Path) -> dict[str, int]:
    """Bytes of the files under each directory right below ``root``."""
    found: dict[str, int] = {}
    try:
        children = [c for c in root.iterdir() if c.is_dir()]
    except FileNotFoundError:
        return found
    for child in children:
        total = 0
        for folder, _, files in os.walk(child):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue  # removed while walked
        found[child.name] = total
    return found


class Sampler:
    def __init__(
        self,
        runtime: AppRuntime,
        metering: MeteringService,
        tenant_ids: Callable[[], Mapping[str, str]],  # tenant name -> id, the live tenants
        storage: StorageSources,
        *,
        interval_s: float = 30.0,
        storage_interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.metering = metering
        self.tenant_ids = tenant_ids
        self.storage = storage
        self.interval_s = interval_s
        self.storage_interval_s = storage_interval_s
        self.clock = clock
        self.tracker = M.CounterTracker(started=clock(), max_gap_s=max(120.0, 4 * interval_s))
        self.live = Live()
        self._live_lock = threading.Lock()
        self._loaded = False
        self._last_storage: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self.tracker = M.CounterTracker(started=self.clock(), max_gap_s=self.tracker.max_gap_s)
        self._thread = threading.Thread(target=self._loop, name="moorage-metering", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        # The first pass one interval after the start: a container seen then counts from its start anyway.
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 (a failed pass must not end the loop; the next one reads again)
                log.warning("metering_pass_failed", error=f"{type(exc).__name__}: {exc}")

    def run_once(self) -> M.Rollup:
        """One pass: containers read, storage measured when due; stored in one write."""
        rollup = M.Rollup()
        if self.runtime.ever_started_anything():
            self._sample_containers(rollup)
        now = self.clock()
        if self._last_storage is None or now - self._last_storage >= self.storage_interval_s:
            self._measure_storage(rollup, now)
        self._store(rollup)
        return rollup

    # -- containers -------------------------------------------------------------------------
    def _sample_containers(self, rollup: M.Rollup) -> None:
        at, ids = self.clock(), self.tenant_ids()
        readings = [_reading(u, ids[u.tenant], at) for u in self.runtime.container_usage() if u.tenant in ids]
        used = self.tracker.observe(readings)
        rollup.usage(used)
        memory: dict[str, float] = {}
        for reading in readings:
            memory[reading.tenant_id] = memory.get(reading.tenant_id, 0.0) + reading.memory_bytes
        with self._live_lock:
            self.live.memory = memory

    # -- storage ----------------------------------------------------------------------------
    def _measure_storage(self, rollup: M.Rollup, now: float) -> None:
        held = self._storage_now()
        start = now if self._last_storage is None else max(self._last_storage, now - 2 * self.storage_interval_s)
        self._last_storage = now
        for (tenant_id, category), size in held.items():
            rollup.gauge(tenant_id, M.STORAGE_OF[category], start, now, float(size))
        with self._live_lock:
            self.live.storage = {key: float(size) for key, size in held.items()}

    def _storage_now(self) -> dict[tuple[str, str], int]:
        held: dict[tuple[str, str], int] = {}

        def add(tenant_id: str | None, category: str, size: int) -> None:
            if tenant_id:
                held[(tenant_id, category)] = held.get((tenant_id, category), 0) + max(0, size)

        for tenant_id, size in self.storage.volumes().items():
            add(tenant_id, "volumes", size)
        for tenant_id, size in tree_bytes_by_child(self.storage.backups_dir).items():
            add(tenant_id, "backups", size)
        if self.storage.snapshots_dir is not None:
            for tenant_id, size in tree_bytes_by_child(self.storage.snapshots_dir).items():
                add(tenant_id, "snapshots", size)
        tenants = set(self.tenant_ids().values())
        if self.runtime.ever_started_anything() and tenants:
            for database_id, size in self.runtime.database_volume_bytes().items():
                add(self.storage.database_of(database_id), "database_volumes", size)
            prefixes = {tenant_repository(t): t for t in tenants}
            for image in self.runtime.tenant_images(*tenants):
                owner = next((t for p, t in prefixes.items() if any(tag.startswith(p) for tag in image.tags)), None)
                add(owner, "images", image.size)
        return {key: size for key, size in held.items() if key[0] in tenants}

    # -- builds -----------------------------------------------------------------------------
    def record_build(self, tenant_id: str, started: float, ended: float) -> None:
        """A build of ``tenant_id`` ran from ``started`` to ``ended`` (epoch seconds), whatever its outcome."""
        rollup = M.Rollup()
        rollup.build(tenant_id, started, ended)
        try:
            self._store(rollup)
        except Exception as exc:  # noqa: BLE001 (metering must never fail a deployment)
            log.warning("build_not_metered", tenant_id=tenant_id, error=f"{type(exc).__name__}: {exc}")

    # -- storing, and what /metrics reads -----------------------------------------------------
    def _store(self, rollup: M.Rollup) -> None:
        items = rollup.items()
        if not items:
            return
        with self._live_lock:  # held while storing: a first scrape's load must see all or none of it
            self.metering.record(items)
            if self._loaded:
                for tenant_id, _, resource, amount, _ in items:
                    if resource not in M.GAUGES:
                        key = (tenant_id, resource)
                        self.live.counters[key] = self.live.counters.get(key, 0.0) + amount

    def snapshot(self) -> Live:
        """A copy of what ``/metrics`` shows; the all-time counters are read from the store once."""
        with self._live_lock:
            if not self._loaded:
                self.live.counters = self.metering.totals()
                self._loaded = True
            return Live(dict(self.live.counters), dict(self.live.memory), dict(self.live.storage))
