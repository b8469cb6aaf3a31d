"""The kernel-side counter readers on made-up /proc and /sys trees (cgroup v1 as on this host,
and v2), and the stats API's JSON: the same Counters either way. tests/control/test_runtime_contract.py
and tests/e2e/test_metering_e2e.py read real runsc containers."""

from __future__ import annotations

from pathlib import Path

from runtime import cgroups
from runtime.stats import Counters, counters

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1200      10    0    0    0     0          0         0      340       3    0    0    0     0       0          0
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    _write(proc / "42" / "cgroup", cgroup)
    _write(proc / "42" / "net" / "dev", NET_DEV)
    return proc


def test_cgroup_v1_counters(tmp_path: Path) -> None:
    group = "/docker/abc"
    proc = _proc(tmp_path, f"7:blkio:{group}\n4:memory:{group}\n2:cpuacct:{group}\n1:cpu:{group}\n0::/\n")
    root = tmp_path / "sys"
    _write(root / "cpuacct" / "docker/abc" / "cpuacct.usage", "5100000000\n")
    _write(root / "memory" / "docker/abc" / "memory.usage_in_bytes", "300\n")
    _write(root / "memory" / "docker/abc" / "memory.max_usage_in_bytes", "900\n")
    _write(root / "memory" / "docker/abc" / "memory.stat", "cache 60\ntotal_inactive_file 50\n")
    _write(
        root / "blkio" / "docker/abc" / "blkio.throttle.io_service_bytes", "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\nTotal 30\n"
    )
    assert cgroups.read(42, proc, root) == Counters(5.1, 250, 900, 1200, 340, 10, 20)


def test_cgroup_v2_counters(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/system.slice/docker-abc.scope\n")
    group = tmp_path / "sys" / "system.slice" / "docker-abc.scope"
    _write(group / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\n")
    _write(group / "memory.current", "1000\n")
    _write(group / "memory.stat", "inactive_file 100\n")
    _write(group / "io.stat", "8:0 rbytes=7 wbytes=9 rios=1 wios=1\n")
    assert cgroups.read(42, proc, tmp_path / "sys") == Counters(2.5, 900, 0, 1200, 340, 7, 9)


def test_unreadable_or_no_process_is_none(tmp_path: Path) -> None:
    assert cgroups.read(0) is None
    assert cgroups.read(42, tmp_path / "nothing", tmp_path) is None


def test_the_stats_apis_json_gives_the_same_counters() -> None:
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 5_100_000_000}},
        "memory_stats": {"usage": 300, "max_usage": 900, "stats": {"total_inactive_file": 50}},
        "networks": {"eth0": {"rx_bytes": 1200, "tx_bytes": 340}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 10}, {"op": "write", "value": 20}]},
    }
    assert counters(stats) == Counters(5.1, 250, 900, 1200, 340, 10, 20)
    assert counters({}) == Counters(0.0, 0, 0, 0, 0, 0, 0)
