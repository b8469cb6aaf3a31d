"""A runsc container serves HTTP reached through a real
Traefik by Host header; its limits and hardening are visible in `docker inspect`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.router import AppRoute, Backend, Router
from runtime.sandbox import SandboxPolicy
from runtime.settings import Limits
from runtime.traefik import TraefikProcess
from tests.runtime.helpers import pyhttp, run, spec, tenant_name, wait_http

pytestmark = pytest.mark.docker

LIMITS = Limits(memory_bytes=128 * 1024 * 1024, nano_cpus=250_000_000, pids=64)


@pytest.fixture(scope="module")
def web(containers: Containers, networks: TenantNetworks) -> Iterator[ContainerInfo]:
    """python3 -m http.server under runsc on the tenant's network, with explicit limits."""
    tenant = tenant_name("web")
    net = networks.ensure(tenant)
    site = replace(pyhttp(tenant, "site", net.name, "hello-from-gvisor"), release="r1")
    info = run(containers, site, SandboxPolicy(limits=LIMITS, cap_add=("NET_BIND_SERVICE",)))
    yield info
    containers.remove(info.id, force=True)
    networks.remove(tenant)


def test_runs_under_gvisor_kernel(web: ContainerInfo, containers: Containers) -> None:
    host_version = Path("/proc/version").read_text().strip()
    inside = containers.exec(web.id, ["cat", "/proc/version"])
    assert inside.exit_code == 0
    assert inside.output.strip() != host_version, "container sees the host kernel: not sandboxed"
    dmesg = containers.exec(web.id, ["dmesg"])
    assert "gVisor" in dmesg.output, dmesg.output[:300]


def test_a_container_that_asks_for_runc_gets_runc_whatever_the_daemons_default(
    containers: Containers, networks: TenantNetworks, engine: DockerEngine
) -> None:
    """Host setup makes runsc the daemon's default (build steps get it); moorage names the
    runtime of every container it starts, so one that asks for runc still gets the host kernel."""
    assert engine.client.info()["DefaultRuntime"] == "runsc", "deploy/host-setup.sh sets it; run it"
    tenant = tenant_name("runc")
    net = networks.ensure(tenant)
    info = run(
        containers,
        spec(tenant, "plain", net.name, command=["sleep", "60"], runtime="runc"),
        SandboxPolicy(allow_unsandboxed=True),
    )
    try:
        inside = containers.exec(info.id, ["cat", "/proc/version"])
        assert inside.output.strip() == Path("/proc/version").read_text().strip()
        assert engine.client.containers.get(info.id).attrs["HostConfig"]["Runtime"] == "runc"
    finally:
        containers.remove(info.id, force=True)
        networks.remove(tenant)


def test_serves_through_traefik_by_host_header(web: ContainerInfo, router: Router, traefik: TraefikProcess) -> None:
    tenant, app = web.labels["moorage.tenant"], web.labels["moorage.app"]
    net = f"moorage-t-{tenant}"
    router.write(AppRoute(tenant, app, [Backend(web.ip_on(net), 8000)], key=f"route_{tenant.replace('-', '_')}"))
    host = router.hostname(tenant, app)
    assert host == f"site.{tenant}.apps.test"
    r = wait_http(traefik.url + "/", host, expect="hello-from-gvisor")
    assert r.status_code == 200
    # An unknown host gets Traefik's 404: the route, not a catch-all, served the page.
    assert httpx.get(traefik.url + "/", headers={"Host": f"other.{tenant}.apps.test"}).status_code == 404
    router.remove(f"route_{tenant.replace('-', '_')}")


def test_limits_and_hardening_visible_in_inspect(web: ContainerInfo, containers: Containers) -> None:
    hc = containers.inspect(web.id).attrs["HostConfig"]
    assert hc["Runtime"] == "runsc"
    assert hc["Memory"] == LIMITS.memory_bytes
    assert hc["MemorySwap"] == LIMITS.memory_bytes
    assert hc["NanoCpus"] == LIMITS.nano_cpus
    assert hc["PidsLimit"] == LIMITS.pids
    assert hc["CapDrop"] == ["ALL"]
    assert hc["CapAdd"] == ["NET_BIND_SERVICE"]
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert hc["Privileged"] is False
    assert not hc.get("Binds")
    assert hc["LogConfig"]["Config"]["max-size"] == "10m"
    labels = web.labels
    assert labels["moorage.managed"] == "true"
    assert labels["moorage.app"] == "site" and labels["moorage.release"] == "r1"


def test_read_only_rootfs(containers: Containers, networks: TenantNetworks) -> None:
    tenant = tenant_name("ro")
    net = networks.ensure(tenant)
    info = run(containers, spec(tenant, "ro", net.name, command=["sleep", "600"]), SandboxPolicy(read_only_rootfs=True))
    try:
        assert containers.inspect(info.id).attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert containers.exec(info.id, ["touch", "/probe"]).exit_code != 0
        assert containers.exec(info.id, ["touch", "/tmp/probe"]).exit_code == 0  # bounded tmpfs
    finally:
        containers.remove(info.id, force=True)
        networks.remove(tenant)
