"""The metering sampler's CPU cost with 20 app containers (small sleeping ones, under runsc),
as a share of one core at the sampling interval (``MOORAGE_METERING_INTERVAL_S``, 30 s).

Each pass does what the control plane's sampler does: list this control plane's containers,
read each one's stats (one reading, no wait), take deltas and store the hourly roll-up in
SQLite. Measured: this process's CPU time per pass (the sampler), and the Docker daemons'
(dockerd, containerd, the shims and the ``runsc`` calls they make and reap) per pass over an
idle window of the same length (other work on the host is subtracted that way, roughly).

    .venv/bin/python bench/metering_overhead.py [--containers 20] [--passes 10] [--interval 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from control.domain.metered_usage import MeteringService
from control.jobs.metering import Sampler, StorageSources
from control.jobs.runtime_docker import INSTANCE_LABEL, DockerAppRuntime
from control.settings import Settings
from control.store import migrate
from control.store.database import Store
from runtime.resilience import BreakerRegistry
from runtime.sandbox import ContainerSpec

IMAGE = "moorage/busybox:latest"
TICKS = os.sysconf("SC_CLK_TCK")
DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runsc", "runsc-gofer", "runsc-sandbox")


def daemon_cpu_s() -> float:
    """utime + stime of the daemons, with their reaped children's (the ``runsc events`` runs)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name in DAEMONS or name.startswith("containerd-shim"):
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--interval", type=float, default=30.0, help="the sampling interval the cost is spread over")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-metering-"))
    store = Store(f"sqlite:///{root / 'moorage.db'}")
    migrate.upgrade(store.engine)
    settings = Settings(data_dir=root)
    runtime = DockerAppRuntime(settings, BreakerRegistry())
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    network = runtime.networks.ensure(tenant).name

    def start(i: int) -> str:
        spec = ContainerSpec(
            tenant=tenant,
            app=f"sleeper-{i}",
            image=IMAGE,
            network=network,
            command=["sleep", "3600"],
            name=f"moorage-bench-{tenant}-{i}",
            labels={INSTANCE_LABEL: runtime.instance},
        )
        return runtime.containers.run(spec, runtime.policy).id

    sampler = Sampler(
        runtime,
        MeteringService(store),
        lambda: {tenant: "ten_bench"},
        StorageSources(volumes=dict, database_of=lambda _: None, backups_dir=root / "backups"),
        interval_s=args.interval,
        storage_interval_s=3600.0,
    )
    ids: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            ids = list(pool.map(start, range(args.containers)))
        sampler.run_once()  # warm-up: connections, the first readings (baselines)
        seen = len(runtime.container_usage())
        cpu0, wall0, daemons0 = time.process_time(), time.perf_counter(), daemon_cpu_s()
        for _ in range(args.passes):
            sampler.run_once()
        own_s = (time.process_time() - cpu0) / args.passes
        wall_s = (time.perf_counter() - wall0) / args.passes
        daemons_s = (daemon_cpu_s() - daemons0) / args.passes
        idle0 = daemon_cpu_s()
        time.sleep(wall_s * args.passes)  # the same window without sampling: the host's other work
        idle_s = (daemon_cpu_s() - idle0) / args.passes
    finally:
        for container_id in ids:
            runtime.containers.remove(container_id, force=True)
        runtime.networks.remove(tenant)
    attributable = max(0.0, daemons_s - idle_s)
    own_pct, total_pct = 100 * own_s / args.interval, 100 * (own_s + attributable) / args.interval
    print(f"{seen} containers read per pass, {args.passes} passes; wall {wall_s * 1000:.0f} ms per pass")
    print(f"sampler process CPU: {own_s * 1000:.1f} ms per pass = {own_pct:.3f}% of one core at a {args.interval:.0f} s interval")
    print(
        f"docker daemons + runsc: {daemons_s * 1000:.1f} ms per pass ({idle_s * 1000:.1f} ms in an idle window of the "
        f"same length) -> {attributable * 1000:.1f} ms attributable"
    )
    verdict = "OK" if total_pct < 2.0 else "OVER the 2% target"
    print(
        f"summary: metering {seen} runsc containers costs {own_pct:.2f}% of one core in the sampler, "
        f"{total_pct:.2f}% with the daemons' share, at a {args.interval:.0f} s interval (target < 2%: {verdict})"
    )
    return 0 if total_pct < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
