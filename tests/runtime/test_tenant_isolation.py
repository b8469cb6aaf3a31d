"""Tenant A's container cannot open a TCP connection to
tenant B's container, tested from inside A; a same-tenant connection succeeds, so the
negative result means isolation and not a broken server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from runtime.containers import ContainerInfo, Containers
from runtime.networks import TenantNetworks
from tests.runtime.helpers import httpd, run_all, sleeper, tenant_name

pytestmark = pytest.mark.docker

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print('blocked', type(e).__name__, e); sys.exit(1)\n"
)


@dataclass
class Tenants:
    a_client: ContainerInfo
    b_client: ContainerInfo
    b_server: ContainerInfo
    a_net: str
    b_net: str


@pytest.fixture(scope="module")
def tenants(containers: Containers, networks: TenantNetworks) -> Iterator[Tenants]:
    a, b = tenant_name("iso-a"), tenant_name("iso-b")
    a_net, b_net = networks.ensure(a).name, networks.ensure(b).name
    made = run_all(
        containers, httpd(b, "api", b_net, "tenant-b-secret"), sleeper(b, "worker", b_net), sleeper(a, "client", a_net)
    )
    yield Tenants(a_client=made[2], b_client=made[1], b_server=made[0], a_net=a_net, b_net=b_net)
    for c in made:
        containers.remove(c.id, force=True)
    networks.remove(a)
    networks.remove(b)


def connect(containers: Containers, client: ContainerInfo, host: str, port: int) -> tuple[int, str]:
    res = containers.exec(client.id, ["python3", "-c", CONNECT, host, str(port)])
    return res.exit_code, res.output.strip()


def test_networks_are_distinct_bridges(tenants: Tenants, networks: TenantNetworks) -> None:
    infos = {n.name: n for n in networks.list()}
    a, b = infos[tenants.a_net], infos[tenants.b_net]
    assert a.subnet and b.subnet and a.subnet != b.subnet
    assert tenants.a_net not in tenants.b_server.ip_addresses


def test_same_tenant_connects(tenants: Tenants, containers: Containers) -> None:
    ip = tenants.b_server.ip_on(tenants.b_net)
    assert connect(containers, tenants.b_client, ip, 8080) == (0, "connected")
    # ...and by its app name, via the tenant network's DNS alias.
    assert connect(containers, tenants.b_client, "api", 8080) == (0, "connected")


def test_other_tenant_cannot_connect(tenants: Tenants, containers: Containers) -> None:
    ip = tenants.b_server.ip_on(tenants.b_net)
    code, out = connect(containers, tenants.a_client, ip, 8080)
    assert code != 0 and out.startswith("blocked"), f"tenant A reached tenant B's container: {out}"
    code, out = connect(containers, tenants.a_client, "api", 8080)  # B's names don't resolve in A
    assert code != 0, out
