"""Metering rules: cumulative container counters turned into deltas, and deltas and gauges
rolled up into hourly rows per tenant and resource. No database, no Docker: the sampler
(``control.jobs.metering``) feeds readings in, ``MeteringService`` stores what comes out.

Counters (CPU, network, block I/O) are cumulative per container *incarnation*: a container
started again (same id, new start time) or whose counter went down (the runtime reset it)
starts from 0, so its new value is all new usage. A delta is never negative. Gauges
(memory, storage bytes) become byte-seconds (value x the seconds it held), so an hour's
average is its byte-seconds over the seconds covered, and keep their peak.

A delta or gauge spanning an hour boundary is split between the hours in proportion to time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

HOUR_S = 3600

# Counters: summed.
CPU_SECONDS = "cpu_seconds"
NET_RX_BYTES = "net_rx_bytes"
NET_TX_BYTES = "net_tx_bytes"
BLOCK_READ_BYTES = "block_read_bytes"
BLOCK_WRITE_BYTES = "block_write_bytes"
BUILD_SECONDS = "build_seconds"
BUILDS = "builds"
# Gauges: byte-seconds summed, peak kept.
MEMORY = "memory_byte_seconds"
VOLUMES = "volume_byte_seconds"
DATABASE_VOLUMES = "database_volume_byte_seconds"
IMAGES = "image_byte_seconds"
BACKUPS = "backup_byte_seconds"
SNAPSHOTS = "snapshot_byte_seconds"

GAUGES = frozenset({MEMORY, VOLUMES, DATABASE_VOLUMES, IMAGES, BACKUPS, SNAPSHOTS})
COUNTERS = (CPU_SECONDS, NET_RX_BYTES, NET_TX_BYTES, BLOCK_READ_BYTES, BLOCK_WRITE_BYTES)
KINDS: dict[str, tuple[str, ...]] = {
    "compute": (*COUNTERS, MEMORY),
    "storage": (VOLUMES, DATABASE_VOLUMES, IMAGES, BACKUPS, SNAPSHOTS),
    "builds": (BUILD_SECONDS, BUILDS),
}
STORAGE_OF = {
    "volumes": VOLUMES,
    "database_volumes": DATABASE_VOLUMES,
    "images": IMAGES,
    "backups": BACKUPS,
    "snapshots": SNAPSHOTS,
}


def hour_of(at: float) -> datetime:
    return datetime.fromtimestamp(at - at % HOUR_S, UTC)


def split_hours(start: float, end: float) -> Iterator[tuple[datetime, float]]:
    """The hours ``[start, end)`` touches, each with the share of the span that falls in it."""
    if end <= start:
        yield hour_of(end), 1.0
        return
    span, at = end - start, start
    while at < end:
        boundary = at - at % HOUR_S + HOUR_S
        upto = min(boundary, end)
        yield hour_of(at), (upto - at) / span
        at = upto


@dataclass(frozen=True, slots=True)
class Reading:
    """One container's cumulative counters and memory at ``at`` (epoch seconds)."""

    container_id: str
    tenant_id: str
    started_at: str  # the incarnation: changes when the container is started again
    at: float
    counters: dict[str, float]  # CPU_SECONDS, NET_*, BLOCK_* (cumulative for this incarnation)
    memory_bytes: int
    memory_peak_bytes: int  # the runtime's high-water mark for this incarnation (0: unknown)
    started_epoch: float | None = None  # the start time, when it can be parsed


@dataclass(frozen=True, slots=True)
class Usage:
    """What one container used between two readings."""

    tenant_id: str
    start: float
    end: float
    counters: dict[str, float]
    memory_bytes: int
    memory_peak_bytes: int


@dataclass
class CounterTracker:
    """The last reading of each container, to take deltas against.

    A container seen for the first time counts from 0 when it started after the tracker did
    (what it used since its start is all new); one already running when the tracker started
    (the control plane restarted) only sets its baseline, so nothing is counted twice.
    ``max_gap_s`` bounds the seconds a gauge is held for (a sampler that stalled, a clock jump).
    A container missing from a pass (stopped, or not readable just then) is remembered for
    ``forget_after_s``: when the same incarnation comes back, it is not counted from 0 again.
    """

    started: float
    max_gap_s: float = 120.0
    forget_after_s: float = 3600.0
    _last: dict[str, Reading] = field(default_factory=dict)

    def observe(self, readings: Iterable[Reading]) -> list[Usage]:
        used, latest = [], self.started
        for reading in readings:
            latest = max(latest, reading.at)
            usage = self._delta(self._last.get(reading.container_id), reading)
            self._last[reading.container_id] = reading
            if usage is not None:
                used.append(usage)
        for gone in [cid for cid, last in self._last.items() if last.at < latest - self.forget_after_s]:
            del self._last[gone]  # removed long ago: its id never comes back
        return used

    def _delta(self, before: Reading | None, now: Reading) -> Usage | None:
        fresh = before is None or before.started_at != now.started_at
        if before is None:
            born = now.started_epoch
            if born is None or born < self.started:
                return None  # running before we watched: a baseline only
            start = max(born, now.at - self.max_gap_s)
        else:
            start = max(before.at, now.at - self.max_gap_s)
        counters = {}
        for name, value in now.counters.items():
            prior = 0.0 if fresh or before is None else before.counters.get(name, 0.0)
            counters[name] = value if value < prior else value - prior  # went down: reset, counts from 0
        rose = fresh or before is None or now.memory_peak_bytes > before.memory_peak_bytes
        peak = max(now.memory_bytes, now.memory_peak_bytes if rose else 0)
        return Usage(now.tenant_id, start, now.at, counters, now.memory_bytes, peak)


@dataclass
class Rollup:
    """Hourly amounts (and peaks, for gauges) per (tenant, hour, resource), to store at once."""

    rows: dict[tuple[str, datetime, str], list[float]] = field(default_factory=dict)

    def add(self, tenant_id: str, resource: str, start: float, end: float, amount: float, peak: float | None = None) -> None:
        for hour, share in split_hours(start, end):
            row = self.rows.setdefault((tenant_id, hour, resource), [0.0, 0.0])
            row[0] += amount * share
            if peak is not None:
                row[1] = max(row[1], peak)

    def gauge(self, tenant_id: str, resource: str, start: float, end: float, value: float) -> None:
        self.add(tenant_id, resource, start, end, value * max(0.0, end - start), peak=value)

    def usage(self, used: Iterable[Usage]) -> None:
        # A tenant's peak in an hour: the sum of its containers' peaks in one reading (an upper
        # bound of what they held at once); their byte-seconds add up exactly.
        peaks: dict[tuple[str, datetime], float] = {}
        for u in used:
            for name, value in u.counters.items():
                if value:
                    self.add(u.tenant_id, name, u.start, u.end, value)
            self.add(u.tenant_id, MEMORY, u.start, u.end, u.memory_bytes * max(0.0, u.end - u.start))
            key = (u.tenant_id, hour_of(u.end))
            peaks[key] = peaks.get(key, 0.0) + u.memory_peak_bytes
        for (tenant_id, hour), peak in peaks.items():
            row = self.rows.setdefault((tenant_id, hour, MEMORY), [0.0, 0.0])
            row[1] = max(row[1], peak)

    def build(self, tenant_id: str, start: float, end: float) -> None:
        self.add(tenant_id, BUILD_SECONDS, start, end, max(0.0, end - start))
        self.add(tenant_id, BUILDS, end, end, 1.0)

    def items(self) -> list[tuple[str, datetime, str, float, float]]:
        return [(t, h, r, a, p) for (t, h, r), (a, p) in self.rows.items()]
