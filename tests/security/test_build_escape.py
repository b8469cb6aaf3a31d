"""Escape probes from a tenant's Dockerfile ``RUN`` step, built by the real deploy pipeline
(a control plane serving on all interfaces, its job workers, the real dockerd and runsc):

* the step runs under gVisor: ``/proc/version`` is gVisor's made-up 4.4.0 kernel, and its
  ``dmesg`` is gVisor's boot banner, not the host's kernel;
* the step cannot reach the control plane (its own loopback, its network's gateway, the
  host's other addresses), another tenant's container, or 169.254.169.254;
* while it reaches what it may: the package mirror over plain HTTP, Traefik's entrypoint.

Each blocked probe is shown to connect once its protection is lifted for a moment (the host
guard opened for the control plane's port, Docker's isolation bypassed for the other
tenant's address, the link-local drop bypassed for the metadata address), so a probe that
cannot connect at all would fail this test rather than pass it. The build's last step fails
on purpose: the log is what is looked at, and no release is made.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from control.security.principal import Principal
from control.settings import Settings
from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.traefik import TraefikProcess
from tests.e2e.apps import BASE, tar_gz
from tests.e2e.conftest import cleanup_tenant, e2e_settings
from tests.live_server import free_port, serving
from tests.runtime.conftest import (  # noqa: F401 (fixtures)
    containers,
    engine,
    networks,
    run_id,
    runtime_settings,
)
from tests.runtime.helpers import RUN_ID, httpd, run, tenant_name
from tests.security.host_probes import TRAEFIK_PORT, host_addresses, opened_in_firewall

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Connects to each target at once (a dropped one waits out its timeout); the build network's
# gateway is the step's default route, read from /proc/net/route.
PROBE = r"""
import concurrent.futures, json, socket, struct, sys
def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError as e:
        return type(e).__name__
targets = json.loads(sys.argv[1])
for name, (host, port) in list(targets.items()):
    if host == "GATEWAY":
        targets[name] = (gateway(), port)
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    found = {name: pool.submit(connect, *target) for name, target in targets.items()}
print("PROBE " + json.dumps({name: f.result() for name, f in found.items()}))
"""


@dataclass
class Rig:
    url: str
    key: str
    port: int  # the control plane's, bound to 0.0.0.0
    other: ContainerInfo  # another tenant's container
    other_ip: str
    other_gateway: str  # the other tenant's network's: an address of the host too


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    engine: DockerEngine,  # noqa: F811
    containers: Containers,  # noqa: F811
    networks: TenantNetworks,  # noqa: F811
) -> Iterator[Rig]:
    tenant = f"bld-{RUN_ID}"
    other = tenant_name("bld-other")
    traefik = TraefikProcess().start()
    port = free_port()
    settings: Settings = e2e_settings(tmp_path_factory.mktemp("build-escape"), traefik, host="0.0.0.0", port=port)
    other_net = networks.ensure(other).name
    victim = run(containers, httpd(other, "api", other_net, "other-tenant-secret"))
    try:
        with serving(settings) as (url, app):
            services = app.state.services
            created = services.tenants.create(tenant)
            operator = services.keys.bootstrap_operator("op").key
            issued = services.keys.issue(
                Principal.of(operator.id, None, operator.scopes), created.id, name="t", scopes=["admin"], expires_at=None
            )
            r = httpx.post(f"{url}/v1/apps", json={"name": "probe", "port": 8080}, headers=_auth(issued.token))
            assert r.status_code == 201, r.text
            gateway = engine.client.networks.get(other_net).attrs["IPAM"]["Config"][0]["Gateway"]
            yield Rig(url, issued.token, port, victim, victim.ip_on(other_net), gateway)
    finally:
        containers.remove(victim.id, force=True)
        networks.remove(other)
        cleanup_tenant(tenant)
        traefik.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def build_log(rig: Rig, targets: dict[str, tuple[str, int]], nonce: str) -> str:
    """Deploy a Dockerfile whose steps print the kernel and run the probe; its build log."""
    dockerfile = (
        f"FROM {BASE}\n"
        f"RUN echo {nonce} && cat /proc/version && dmesg | head -n 1\n"
        "COPY probe.py /probe.py\n"
        f"RUN python3 /probe.py '{json.dumps(targets)}'\n"
        "RUN echo 'the probe is done: no release' && false\n"
    )
    archive = tar_gz({"Dockerfile": dockerfile, "probe.py": PROBE})
    headers = _auth(rig.key) | {"Content-Type": "application/gzip"}
    r = httpx.post(f"{rig.url}/v1/apps/probe/deployments", content=archive, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    deployment = r.json()["id"]
    deadline, status = time.monotonic() + 240, ""
    while time.monotonic() < deadline and status not in ("running", "failed", "cancelled"):
        time.sleep(0.5)
        status = httpx.get(f"{rig.url}/v1/apps/probe/deployments/{deployment}", headers=_auth(rig.key)).json()["status"]
    assert status == "failed", status
    logs = httpx.get(f"{rig.url}/v1/apps/probe/deployments/{deployment}/logs", headers=_auth(rig.key), timeout=30)
    return logs.text


def probed(log: str) -> dict[str, object]:
    [line] = [line for line in log.splitlines() if "PROBE {" in line]
    return dict(json.loads(line.split("PROBE ", 1)[1]))


def blocked_targets(rig: Rig) -> dict[str, tuple[str, int]]:
    host = {f"control-plane-via-{name}": (address, rig.port) for name, address in host_addresses().items()}
    return host | {
        "control-plane-via-own-loopback": ("127.0.0.1", rig.port),
        "control-plane-via-gateway": ("GATEWAY", rig.port),
        "control-plane-via-other-tenant-gateway": (rig.other_gateway, rig.port),
        "other-tenant": (rig.other_ip, 8080),
        "metadata": ("169.254.169.254", 80),
    }


ALLOWED = {"mirror": ("deb.debian.org", 80), "traefik-via-gateway": ("GATEWAY", TRAEFIK_PORT)}


@pytest.fixture(scope="module")
def protected(rig: Rig) -> str:
    return build_log(rig, blocked_targets(rig) | ALLOWED, nonce=f"protected-{RUN_ID}")


@contextmanager
def forwarded(address: str) -> Iterator[None]:
    """Accept forwarding to and from ``address`` ahead of Docker's isolation chains and the
    link-local drop (both come after DOCKER-USER's first rule)."""
    rules = [["DOCKER-USER", "-d", address, "-j", "ACCEPT"], ["DOCKER-USER", "-s", address, "-j", "ACCEPT"]]
    for rule in rules:
        subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-D", *rule], check=True)


def test_build_steps_run_under_gvisor(protected: str) -> None:
    host_kernel = Path("/proc/version").read_text().strip()
    assert "Linux version 4.4.0" in protected, protected[-3000:]
    assert "Starting gVisor..." in protected, protected[-3000:]  # gVisor's dmesg banner
    assert host_kernel not in protected


def test_build_steps_reach_the_mirror_and_traefik(protected: str) -> None:
    seen = probed(protected)
    assert all(seen[name] is True for name in ALLOWED), seen


def test_build_steps_reach_no_control_plane_no_other_tenant_and_no_metadata(rig: Rig, protected: str) -> None:
    seen = probed(protected)
    reached = {name: seen[name] for name in blocked_targets(rig) if seen[name] is True}
    assert not reached, seen
    assert len(blocked_targets(rig)) >= 6, seen


def test_each_blocked_probe_connects_with_its_protection_lifted(rig: Rig) -> None:
    lifted = {name: target for name, target in blocked_targets(rig).items() if name != "control-plane-via-own-loopback"}
    with ExitStack() as stack:
        stack.enter_context(opened_in_firewall(rig.port))
        stack.enter_context(forwarded(rig.other_ip))
        stack.enter_context(forwarded("169.254.169.254"))
        seen = probed(build_log(rig, lifted, nonce=f"lifted-{RUN_ID}"))
    assert all(result is True for result in seen.values()), seen
