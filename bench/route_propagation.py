"""Route propagation delay: route file written (atomically, by runtime.router) -> first 200
through a real Traefik for the new Host.

Starts its own Traefik with the static config host-setup uses (same generator, loopback
ports, a temp dynamic dir) and one python3 http.server backend under runsc.

    .venv/bin/python bench/route_propagation.py [-n 10] [--throttle 500ms]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx
from _probes import first_200  # bench/ is on sys.path when a bench runs as a script

from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.router import AppRoute, Backend, Router
from runtime.sandbox import ContainerSpec
from runtime.settings import RuntimeSettings
from runtime.traefik import DEFAULT_THROTTLE, TraefikProcess

SERVE = ["sh", "-c", "mkdir -p /srv && echo ok > /srv/index.html && exec python3 -m http.server -d /srv 8000"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--throttle", default=DEFAULT_THROTTLE, help="Traefik providersThrottleDuration")
    args = ap.parse_args()
    engine = DockerEngine(RuntimeSettings())
    containers, networks = Containers(engine), TenantNetworks(engine)
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    net = networks.ensure(tenant).name
    backend = containers.run(
        ContainerSpec(tenant=tenant, app="web", image="moorage/python:3-bookworm", network=net, command=SERVE)
    )
    delays: list[float] = []
    with TraefikProcess(throttle=args.throttle) as traefik:
        router = Router(RuntimeSettings(base_domain="bench.test"), dynamic_dir=traefik.dynamic_dir)
        try:
            with httpx.Client(timeout=2.0) as client:
                b = Backend(backend.ip_on(net), 8000)
                for i in range(args.n + 1):
                    app = f"app{i}"
                    time.sleep(0.7)  # let the previous reload settle so samples are independent
                    t0 = time.perf_counter()
                    router.write(AppRoute(tenant, app, [b], key=f"bench_{app}"))
                    delay = first_200(client, traefik.url + "/", router.hostname(tenant, app), timeout=30.0) - t0
                    if i:  # the first one warms Traefik's transport; discarded
                        delays.append(delay)
        finally:
            containers.remove(backend.id, force=True)
            networks.remove(tenant)
    ms = [d * 1000 for d in delays]
    print(f"Traefik {traefik.opts.throttle} providersThrottleDuration, file provider, {len(ms)} samples")
    print("delays ms: " + ", ".join(f"{x:.0f}" for x in ms))
    print(
        f"summary: route propagation (file written -> first 200 via Traefik) median {statistics.median(ms):.0f} ms, "
        f"min {min(ms):.0f} ms, max {max(ms):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
