"""Tenants' code reaches the control plane's API through Traefik, and only so.

A control plane serving on all interfaces routes ``api.<base-domain>`` through the host's
Traefik (as ``moorage serve`` does at start); from an app container (runsc, the tenant's
network) ``http://api.<base-domain>/healthz`` through Traefik's entrypoint answers, while the
control plane's own port on the network's gateway is refused by the host guard. With that
port opened in the firewall the same probe connects: the refusal is the guard's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from control.settings import Settings
from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from tests.live_server import free_port, serving
from tests.runtime.conftest import (  # noqa: F401 (fixtures)
    containers,
    engine,
    networks,
    run_id,
    runtime_settings,
)
from tests.runtime.helpers import PYTHON, RUN_ID, SETUP_HINT, run, sleeper, tenant_name
from tests.security.host_probes import TRAEFIK_PORT, host_guard_present, opened_in_firewall

pytestmark = pytest.mark.docker

HOST_TRAEFIK = f"http://127.0.0.1:{TRAEFIK_PORT}"
PROBE = r"""
import json, socket, sys, urllib.request
gateway, port, hostname = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def connect():
    try:
        socket.create_connection((gateway, port), timeout=3).close()
        return True
    except OSError as e:
        return type(e).__name__
def through_traefik():
    request = urllib.request.Request(f"http://{gateway}/healthz", headers={"Host": hostname})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return {"status": r.status, "body": r.read().decode()[:200]}
    except Exception as e:
        return {"error": repr(e)}
print(json.dumps({"direct": connect(), "traefik": through_traefik()}))
"""


@dataclass
class Rig:
    app: ContainerInfo
    gateway: str
    port: int
    hostname: str


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    engine: DockerEngine,  # noqa: F811
    containers: Containers,  # noqa: F811
    networks: TenantNetworks,  # noqa: F811
) -> Iterator[Rig]:
    try:
        httpx.get(HOST_TRAEFIK, timeout=2)
    except httpx.HTTPError as exc:
        pytest.fail(f"the host's Traefik does not answer on {HOST_TRAEFIK} ({exc}): {SETUP_HINT}", pytrace=False)
    tenant = tenant_name("api-via-traefik")
    network = networks.ensure(tenant).name
    gateway = engine.client.networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    app = run(containers, sleeper(tenant, "agent", network, image=PYTHON))
    port = free_port()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api-via-traefik"),
        host="0.0.0.0",
        port=port,
        base_domain=f"bgv{RUN_ID}.test",
        job_workers=0,
        reconcile_interval_s=0,
    )  # the host Traefik's dynamic directory: Settings' default, as deploy/host-setup.sh
    try:
        with serving(settings) as (_, served):
            services = served.state.services
            hostname = services.route_api(settings.host, settings.port)  # as `moorage serve` at start
            try:
                yield Rig(app, gateway, port, hostname)
            finally:
                services.unroute_api(settings.host, settings.port)  # and as it stops
    finally:
        containers.remove(app.id, force=True)
        networks.remove(tenant)


def probe(rig: Rig, containers: Containers) -> dict:  # noqa: F811
    result = containers.exec(rig.app.id, ["python3", "-c", PROBE, rig.gateway, str(rig.port), rig.hostname])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_an_app_reaches_the_api_through_traefik_but_not_the_control_planes_port(
    rig: Rig,
    containers: Containers,  # noqa: F811
) -> None:
    assert host_guard_present(), "deploy/host-setup.sh installs the host guard; run it"
    seen: dict = {}
    for _ in range(20):  # Traefik applies a new route file within its throttle
        seen = probe(rig, containers)
        if seen["traefik"].get("status") == 200:
            break
        time.sleep(0.25)
    assert seen["traefik"].get("status") == 200 and '"status"' in seen["traefik"]["body"], seen
    assert seen["direct"] == "ConnectionRefusedError", seen


def test_the_control_planes_port_connects_once_opened_in_the_firewall(rig: Rig, containers: Containers) -> None:  # noqa: F811
    with opened_in_firewall(rig.port):
        assert probe(rig, containers)["direct"] is True
