"""Escape probes from INSIDE a tenant container, as moorage runs it (runsc, tenant network,
the default sandbox policy): what an attacker who owns the app's process can reach.

* no Docker socket at /var/run/docker.sock or /run/docker.sock;
* no host service bound to loopback: neither via the tenant bridge's gateway IP nor via
  127.0.0.1 (the container's own loopback, its own network namespace);
* no host service bound to all interfaces (0.0.0.0), on any of the host's addresses (the
  bridge's gateway, docker0, the other tenant's gateway, the host's own interfaces): the
  host guard deploy/host-setup.sh installs refuses it, while Traefik's entrypoint stays
  reachable (an app may call another app's public URL); with the port opened in the
  firewall the same probe connects, so the probe itself works;
* no other tenant's container; no metadata-style address (169.254.169.254:80 fails fast:
  an expected failure on this host, see the test);
* no capabilities (CapEff 0), no-new-privileges set, and a read-only root filesystem
  when the policy asks for one (only the bounded /tmp is writable);
* the same from inside an environment (a sandbox), started and exec'd into through the
  Docker adapter as ``POST /v1/environments/{env}/exec`` runs commands: no Docker socket, no
  control-plane port (a listener on loopback and one on all interfaces, as ``moorage serve``
  binds), no metadata address, no other tenant's container, no capabilities.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.sandbox import SandboxPolicy
from tests.runtime.conftest import (  # noqa: F401 (fixtures)
    containers,
    engine,
    networks,
    run_id,
    runtime_settings,
)
from tests.runtime.helpers import PYTHON, httpd, run_all, spec, tenant_name
from tests.security.host_probes import TRAEFIK_PORT, Listener, host_addresses, host_guard_present, opened_in_firewall

pytestmark = pytest.mark.docker

PROBE = r"""
import concurrent.futures, json, os, socket, sys, time
def connect(host, port, timeout=3):
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return {"reached": True, "s": round(time.monotonic() - started, 2)}
    except OSError as e:
        return {"reached": False, "error": type(e).__name__, "s": round(time.monotonic() - started, 2)}
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return True
    except OSError:
        return False
def prctl_no_new_privs():
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
    except Exception as e:
        return repr(e)
targets = json.loads(sys.argv[1])
# All at once: each dropped connection waits out its whole timeout, and they do not depend on each other.
with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
    futures = {name: pool.submit(connect, host, port) for name, (host, port) in targets.items()}
connected = {name: future.result() for name, future in futures.items()}
print(json.dumps({
    "sockets": {p: os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")},
    "connect": connected,
    "cap_eff": status.get("CapEff", "").strip(), "cap_bnd": status.get("CapBnd", "").strip(),
    "no_new_privs": status.get("NoNewPrivs", "").strip(), "prctl_no_new_privs": prctl_no_new_privs(),
    "uid": os.getuid(),
    "root_writable": writable("/probe-root"), "etc_writable": writable("/etc/probe"), "tmp_writable": writable("/tmp/probe"),
}))
"""


@dataclass
class Setup:
    client: ContainerInfo
    read_only_client: ContainerInfo
    other: ContainerInfo
    other_net: str
    gateway: str
    other_gateway: str
    loopback_port: int
    wildcard_port: int
    tenant: str = ""


@pytest.fixture(scope="module")
def setup(engine: DockerEngine, containers: Containers, networks: TenantNetworks) -> Iterator[Setup]:  # noqa: F811
    a, b = tenant_name("esc-a"), tenant_name("esc-b")
    a_net, b_net = networks.ensure(a).name, networks.ensure(b).name
    gateway = engine.client.networks.get(a_net).attrs["IPAM"]["Config"][0]["Gateway"]
    other_gateway = engine.client.networks.get(b_net).attrs["IPAM"]["Config"][0]["Gateway"]
    loopback = Listener("127.0.0.1")  # like `moorage serve` (host 127.0.0.1 by default)
    wildcard = Listener("0.0.0.0")
    made = run_all(
        containers,
        httpd(b, "api", b_net, "tenant-b-secret"),
        spec(a, "client", a_net, image=PYTHON, command=["sleep", "600"]),
        (spec(a, "ro-client", a_net, image=PYTHON, command=["sleep", "600"]), SandboxPolicy(read_only_rootfs=True)),
    )
    try:
        yield Setup(
            client=made[1],
            read_only_client=made[2],
            other=made[0],
            other_net=b_net,
            gateway=gateway,
            other_gateway=other_gateway,
            loopback_port=loopback.port,
            wildcard_port=wildcard.port,
            tenant=a,
        )
    finally:
        loopback.close()
        wildcard.close()
        for c in made:
            containers.remove(c.id, force=True)
        networks.remove(a)
        networks.remove(b)


def probe(containers: Containers, client: ContainerInfo, targets: dict[str, tuple[str, int]]) -> dict:  # noqa: F811
    result = containers.exec(client.id, ["python3", "-c", PROBE, json.dumps(targets)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seen(setup: Setup, containers: Containers) -> dict:  # noqa: F811
    return probe(
        containers,
        setup.client,
        {
            "host-loopback-via-gateway": (setup.gateway, setup.loopback_port),
            "own-loopback": ("127.0.0.1", setup.loopback_port),
            "other-tenant": (setup.other.ip_on(setup.other_net), 8080),
            "metadata": ("169.254.169.254", 80),
            "metadata-ecs": ("169.254.170.2", 80),
            "test-net": ("203.0.113.7", 80),  # RFC 5737: no host can exist there (control for egress interception)
            **wildcard_targets(setup),
            "traefik-via-gateway": (setup.gateway, TRAEFIK_PORT),
        },
    )


def wildcard_targets(setup: Setup) -> dict[str, tuple[str, int]]:
    """The 0.0.0.0-bound listener on every address of the host."""
    addresses = {"gateway": setup.gateway, "other-tenant-gateway": setup.other_gateway} | host_addresses()
    return {f"host-wildcard-via-{name}": (address, setup.wildcard_port) for name, address in addresses.items()}


def test_docker_socket_is_absent(seen: dict) -> None:
    assert seen["sockets"] == {"/var/run/docker.sock": False, "/run/docker.sock": False}


def test_host_services_on_loopback_are_unreachable(seen: dict) -> None:
    assert not seen["connect"]["host-loopback-via-gateway"]["reached"], seen["connect"]
    assert not seen["connect"]["own-loopback"]["reached"], seen["connect"]


def test_other_tenants_container_is_unreachable(seen: dict) -> None:
    assert not seen["connect"]["other-tenant"]["reached"], seen["connect"]


def test_metadata_addresses_are_unreachable(seen: dict) -> None:
    # deploy/host-setup.sh drops container egress to 169.254.0.0/16 in DOCKER-USER. Without that
    # rule these connect (on this host even the RFC 5737 control address "connects": the
    # environment's egress proxy accepts every outbound TCP connect), so this can fail.
    probes = {name: seen["connect"][name] for name in ("metadata", "metadata-ecs")}
    assert not any(p["reached"] for p in probes.values()), probes
    assert all(p["s"] <= 3.5 for p in probes.values()), probes  # dropped or refused quickly


def test_host_services_on_all_interfaces_are_unreachable_on_every_host_address(seen: dict, setup: Setup) -> None:
    assert host_guard_present(), "deploy/host-setup.sh installs the host guard; run it"
    probes = {name: seen["connect"][name] for name in wildcard_targets(setup)}
    assert len(probes) >= 4, probes  # the gateways, docker0 and the host's own interface at least
    assert not any(p["reached"] for p in probes.values()), probes
    assert all(p["s"] <= 1.0 for p in probes.values()), probes  # refused at once, not left to time out


def test_traefiks_entrypoint_stays_reachable_from_apps(seen: dict) -> None:
    assert seen["connect"]["traefik-via-gateway"]["reached"], seen["connect"]


def test_the_same_probe_connects_once_the_port_is_opened_in_the_firewall(setup: Setup, containers: Containers) -> None:  # noqa: F811
    targets = wildcard_targets(setup)
    with opened_in_firewall(setup.wildcard_port):
        opened = probe(containers, setup.client, targets)["connect"]
    assert all(p["reached"] for p in opened.values()), opened


def test_no_capabilities_and_no_new_privileges(seen: dict, setup: Setup, engine: DockerEngine) -> None:  # noqa: F811
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0, seen
    # gVisor's /proc/self/status has no NoNewPrivs line; ask the kernel (gVisor's) directly.
    assert seen["no_new_privs"] in ("1", "") and seen["prctl_no_new_privs"] == 1, seen
    host_config = engine.client.containers.get(setup.client.id).attrs["HostConfig"]
    assert "no-new-privileges:true" in (host_config.get("SecurityOpt") or []), host_config.get("SecurityOpt")
    assert host_config.get("Runtime") == "runsc" and host_config.get("CapDrop") == ["ALL"], host_config


def test_read_only_root_when_the_policy_asks(setup: Setup, containers: Containers) -> None:  # noqa: F811
    writable = probe(containers, setup.client, {})
    assert writable["root_writable"]  # the default policy: a writable (ephemeral) root
    read_only = probe(containers, setup.read_only_client, {})
    assert not read_only["root_writable"] and not read_only["etc_writable"], read_only
    assert read_only["tmp_writable"], read_only  # the bounded tmpfs
    assert int(read_only["cap_eff"], 16) == 0 and read_only["sockets"] == writable["sockets"]


# -- from inside an environment (a sandbox) -------------------------------------------------
@pytest.fixture(scope="module")
def environment_seen(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from control.ids import new_id
    from control.jobs.runtime_docker import DockerAppRuntime
    from control.jobs.runtime_port import EnvironmentSpec
    from control.settings import Settings
    from runtime.resilience import BreakerRegistry

    runtime = DockerAppRuntime(Settings(data_dir=tmp_path_factory.mktemp("escape-env")), BreakerRegistry())
    sandbox = runtime.start_environment(EnvironmentSpec(new_id("env"), setup.tenant, PYTHON, 500, 256))
    targets = {
        "control-plane-via-gateway": (setup.gateway, setup.loopback_port),
        "control-plane-own-loopback": ("127.0.0.1", setup.loopback_port),
        "other-tenant": (setup.other.ip_on(setup.other_net), 8080),
        "metadata": ("169.254.169.254", 80),
        "metadata-ecs": ("169.254.170.2", 80),
        **wildcard_targets(setup),
    }
    out: list[bytes] = []
    try:
        outcome = runtime.exec_in(
            sandbox.id,
            ["python3", "-c", PROBE, json.dumps(targets)],
            stdin=None,
            workdir=None,
            env={},
            timeout=60,
            on_output=lambda stream, data: out.append(data) if stream == "stdout" else None,
            cancelled=lambda: False,
        )
        assert outcome.exit_code == 0, (outcome, b"".join(out))
        yield json.loads(b"".join(out).decode().strip().splitlines()[-1]) | {"container": sandbox.id}
    finally:
        runtime.remove(sandbox.id)


def test_from_an_environment_no_socket_no_control_plane_no_metadata_no_other_tenant(environment_seen: dict, setup: Setup) -> None:
    seen = environment_seen
    assert seen["sockets"] == {"/var/run/docker.sock": False, "/run/docker.sock": False}
    reached = {name: probe for name, probe in seen["connect"].items() if probe["reached"]}
    assert not reached, seen["connect"]
    assert len(seen["connect"]) >= 8, seen["connect"]
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0 and seen["prctl_no_new_privs"] == 1, seen


def test_an_environment_runs_under_runsc_with_its_limits(environment_seen: dict, engine: DockerEngine) -> None:  # noqa: F811
    host_config = engine.client.containers.get(environment_seen["container"]).attrs["HostConfig"]
    assert host_config.get("Runtime") == "runsc" and host_config.get("CapDrop") == ["ALL"], host_config
    assert "no-new-privileges:true" in (host_config.get("SecurityOpt") or [])
    assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 256 * 2**20
