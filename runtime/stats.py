"""A container's resource counters from the engine's stats API, in plain units.

``stats(stream=False, one_shot=True)`` answers from one reading (no second sample to compute
a CPU percentage), in milliseconds; under gVisor (runsc) the shim reports the sandbox's own
accounting through the same API. The fields differ between cgroup v1 and v2: memory in use
leaves out page cache the kernel can drop (``total_inactive_file`` / ``inactive_file``) the way
``docker stats`` does; the high-water mark (``max_usage``) exists under cgroup v1 only (0 here
otherwise); block I/O is summed over devices, reads and writes (either spelling of the op).
Under runsc block I/O reads 0: the sandbox's gofer does the file I/O, not the container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Counters:
    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int


def counters(stats: Mapping[str, Any]) -> Counters:
    cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0
    used = int(memory.get("usage") or 0)
    networks = (stats.get("networks") or {}).values()
    read = write = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value") or 0)
        elif op == "write":
            write += int(entry.get("value") or 0)
    return Counters(
        cpu_seconds=int(cpu) / 1e9,
        memory_bytes=used - int(cache) if cache < used else used,
        memory_peak_bytes=int(memory.get("max_usage") or 0),
        net_rx_bytes=sum(int(n.get("rx_bytes") or 0) for n in networks),
        net_tx_bytes=sum(int(n.get("tx_bytes") or 0) for n in networks),
        block_read_bytes=read,
        block_write_bytes=write,
    )
