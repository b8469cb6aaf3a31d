"""Rewriting an app's route file while it is hammered through Traefik
never yields a 404/502 (Traefik only ever sees a whole old file or a whole new one)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from runtime.containers import ContainerInfo, Containers
from runtime.networks import TenantNetworks
from runtime.router import AppRoute, Backend, Router
from runtime.traefik import TraefikProcess
from tests.runtime.helpers import pyhttp, run, tenant_name, wait_http

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def backends(containers: Containers, networks: TenantNetworks) -> Iterator[tuple[str, str, list[Backend]]]:
    tenant = tenant_name("swap")
    net = networks.ensure(tenant).name
    made: list[ContainerInfo] = [run(containers, pyhttp(tenant, f"v{i}", net, f"backend-{i}")) for i in (1, 2)]
    yield tenant, net, [Backend(c.ip_on(net), 8000) for c in made]
    for c in made:
        containers.remove(c.id, force=True)
    networks.remove(tenant)


def test_rewrites_under_load_never_404_or_502(
    backends: tuple[str, str, list[Backend]], router: Router, traefik: TraefikProcess
) -> None:
    tenant, _, (one, two) = backends
    app = "swapper"
    host = router.hostname(tenant, app)
    router.write(AppRoute(tenant, app, [one], key="route_swapper"))
    wait_http(traefik.url + "/", host, expect="backend-1")

    statuses: Counter[int] = Counter()
    bodies: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=5.0) as client:
            while not stop.is_set():
                r = client.get(traefik.url + "/", headers={"Host": host})
                statuses[r.status_code] += 1
                bodies[r.text.strip()] += 1

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        rewrites = 0
        deadline = time.monotonic() + 4.0  # Traefik throttles reloads: span many of them
        while time.monotonic() < deadline:
            # Alternate backends; also vary an extra host so each write is a real change.
            target = two if rewrites % 2 == 0 else one
            router.write(AppRoute(tenant, app, [target], extra_hosts=[f"r{rewrites}.alias.test"], key="route_swapper"))
            rewrites += 1
            time.sleep(0.02)
        router.write(AppRoute(tenant, app, [two], key="route_swapper"))
        wait_http(traefik.url + "/", host, expect="backend-2")
    finally:
        stop.set()
        for w in workers:
            w.join()
        router.remove("route_swapper")

    total = sum(statuses.values())
    # Enough traffic to land inside every reload (about 8 of them in 4 s): a few per reload
    # would do, and a loaded 2-core machine serves well under the 200 a quiet one does.
    assert rewrites >= 50 and total >= 100, (rewrites, total)
    assert set(statuses) == {200}, f"non-200 answers during rewrites: {dict(statuses)}"
    assert {"backend-1", "backend-2"} <= set(bodies), dict(bodies)
    assert not list(router.dynamic_dir.glob("*.tmp")), "temp files left behind"
