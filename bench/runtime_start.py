"""Container start time under gVisor (runsc) vs runc, through moorage's own adapters.

Per sample: `Containers.run` (create + start, hardened, on a tenant network) until the API
returns, and until the container's HTTP port first accepts a TCP connection from the host.
Runtimes are interleaved so drift on the host affects both alike.

    .venv/bin/python bench/runtime_start.py [-n 12]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
import uuid

from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.sandbox import ContainerSpec, SandboxPolicy
from runtime.settings import RuntimeSettings

IMAGE = "moorage/busybox:latest"
SERVE = ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]


def wait_accept(ip: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.002)
    raise TimeoutError(f"{ip}:{port} never accepted")


def sample(containers: Containers, net: str, tenant: str, runtime: str, i: int) -> tuple[float, float]:
    spec = ContainerSpec(
        tenant=tenant,
        app=f"{runtime}-{i}",
        image=IMAGE,
        network=net,
        command=SERVE,
        runtime=runtime,
        name=f"moorage-bench-{tenant}-{runtime}-{i}",
    )
    t0 = time.perf_counter()
    info = containers.run(spec, SandboxPolicy(allow_unsandboxed=True))
    started = time.perf_counter() - t0
    wait_accept(info.ip_on(net), 8080)
    ready = time.perf_counter() - t0
    containers.remove(info.id, force=True)
    return started, ready


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=12, help="samples per runtime (>= 10)")
    args = ap.parse_args()
    settings = RuntimeSettings()
    engine = DockerEngine(settings)
    containers, networks = Containers(engine), TenantNetworks(engine)
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    net = networks.ensure(tenant).name
    results: dict[str, list[tuple[float, float]]] = {"runsc": [], "runc": []}
    try:
        for rt in results:  # warm-up, discarded (image layers, runtime binaries into cache)
            sample(containers, net, tenant, rt, 999)
        for i in range(args.n):
            for rt in results:
                results[rt].append(sample(containers, net, tenant, rt, i))
    finally:
        for c in containers.find(tenant=tenant):
            containers.remove(c.id, force=True)
        networks.remove(tenant)

    print(f"engine {engine.version()}, image {IMAGE}, {args.n} samples per runtime (interleaved)")
    med: dict[str, tuple[float, float]] = {}
    for rt, xs in results.items():
        starts, readies = [x[0] for x in xs], [x[1] for x in xs]
        med[rt] = (statistics.median(starts), statistics.median(readies))
        print(
            f"{rt:6s} create+start: median {med[rt][0] * 1000:7.1f} ms  (min {min(starts) * 1000:.1f}, "
            f"max {max(starts) * 1000:.1f})   first TCP accept: median {med[rt][1] * 1000:7.1f} ms  "
            f"(min {min(readies) * 1000:.1f}, max {max(readies) * 1000:.1f})"
        )
    ratio_start, ratio_ready = med["runsc"][0] / med["runc"][0], med["runsc"][1] / med["runc"][1]
    print(
        f"summary: runsc {med['runsc'][0] * 1000:.0f} ms vs runc {med['runc'][0] * 1000:.0f} ms median "
        f"create+start (ratio {ratio_start:.2f}x); to first TCP accept {med['runsc'][1] * 1000:.0f} ms vs "
        f"{med['runc'][1] * 1000:.0f} ms (ratio {ratio_ready:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
