"""The warm pool against the real engine and runsc: pooled containers idle under gVisor on the
pool's own network with no egress; an environment claims one and gets the tenant's network
(and only it), runs commands, is metered as the tenant's; the pool refills to its size and
never beyond it; a deleted or expired environment from the pool leaves nothing behind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
from litestar.testing import TestClient

from control.app import create_app
from control.jobs.environment_names import POOL_NETWORK, POOL_ROLE
from control.jobs.environment_pool import WarmPool
from control.jobs.runtime_docker import INSTANCE_LABEL
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import PYTHON, RUN_ID

pytestmark = pytest.mark.docker
EGRESS_PROBE = (
    "import socket\ntry:\n    socket.create_connection(('deb.debian.org', 80), timeout=3).close(); print('egress')\n"
    "except OSError as exc:\n    print('no egress', type(exc).__name__)\n"
)


@pytest.fixture(scope="module")
def platform(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tenant_name = f"pool-{RUN_ID}"
    settings = e2e_settings(
        tmp_path_factory.mktemp("pool"),
        traefik,
        environment_pool=f"{PYTHON}=1",
        environment_pool_refill_s=0.5,
        environment_cpu_default=0.5,
        environment_memory_mb_default=256,
        reconcile_interval_s=1,
    )
    app = create_app(settings)
    instance = ""
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            instance = app.state.services.deploys.runtime.instance
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            yield Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik)
    finally:
        remove_pool(instance)
        cleanup_tenant(tenant_name)


def remove_pool(instance: str) -> None:
    engine = docker.from_env()
    for c in engine.containers.list(all=True, filters={"label": [f"moorage.role={POOL_ROLE}", f"{INSTANCE_LABEL}={instance}"]}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)
    for n in engine.networks.list(names=[POOL_NETWORK]):
        with contextlib.suppress(docker.errors.APIError):  # another run's pool still on it
            n.remove()
    engine.close()


def pool_of(platform: Platform) -> WarmPool:
    pool: WarmPool = platform.app.state.services.environment_pool
    return pool


def pooled_containers(platform: Platform) -> list[Any]:
    instance = platform.app.state.services.deploys.runtime.instance
    return docker.from_env().containers.list(
        all=True, filters={"label": [f"moorage.role={POOL_ROLE}", f"{INSTANCE_LABEL}={instance}"]}
    )


def wait_ready(platform: Platform, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pool_of(platform).ready().get(PYTHON, 0) < 1:
        assert time.monotonic() < deadline, f"the pool never filled: {pool_of(platform).status()}"
        time.sleep(0.1)


def test_a_pooled_container_idles_sandboxed_with_no_egress(platform: Platform) -> None:
    wait_ready(platform)
    (idle,) = [c for c in pooled_containers(platform) if c.name.startswith("moorage-pool-")]
    assert idle.attrs["HostConfig"]["Runtime"] == "runsc"
    assert list(idle.attrs["NetworkSettings"]["Networks"]) == [POOL_NETWORK]
    assert idle.attrs["HostConfig"]["Memory"] == 256 * 1024 * 1024
    _, out = idle.exec_run(["python3", "-c", EGRESS_PROBE])
    assert out.decode().startswith("no egress"), out


def test_an_environment_claims_the_pooled_container_and_the_pool_refills(platform: Platform) -> None:
    wait_ready(platform)
    (idle,) = [c for c in pooled_containers(platform) if c.name.startswith("moorage-pool-")]
    made = platform.tenant.post("/v1/environments", json={"image": PYTHON})
    assert made.status_code == 201, made.text
    env = made.json()
    claimed = docker.from_env().containers.get(idle.id)
    assert claimed.name == f"moorage-{env['id']}"
    assert f"moorage-t-{platform.tenant_name}" in claimed.attrs["NetworkSettings"]["Networks"]
    deadline = time.monotonic() + 10  # it leaves the pool's network right after the claim
    while list(claimed.attrs["NetworkSettings"]["Networks"]) != [f"moorage-t-{platform.tenant_name}"]:
        assert time.monotonic() < deadline, claimed.attrs["NetworkSettings"]["Networks"]
        time.sleep(0.1)
        claimed.reload()
    ran = platform.tenant.post(
        f"/v1/environments/{env['id']}/exec", json={"command": ["python3", "-c", "import os; print(os.getcwd())"]}
    )
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0 and ran.json()["stdout"].strip() == "/workspace", ran.text
    probe = platform.tenant.post(f"/v1/environments/{env['id']}/exec", json={"command": ["python3", "-c", EGRESS_PROBE]})
    assert probe.json()["stdout"].startswith("egress"), probe.text  # the tenant's network, as a cold one has
    usage = {u.container_id: u for u in platform.app.state.services.deploys.runtime.container_usage()}
    assert usage[idle.id].tenant == platform.tenant_name and usage[idle.id].role == "environment"
    # Refilled: one ready again, another container; never two unclaimed at once.
    most = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        idle_now = [c for c in pooled_containers(platform) if c.name.startswith("moorage-pool-")]
        most = max(most, len(idle_now))
        if idle_now and pool_of(platform).ready().get(PYTHON) == 1:
            break
        time.sleep(0.1)
    assert idle_now and idle_now[0].id != idle.id and most == 1
    assert platform.tenant.delete(f"/v1/environments/{env['id']}").status_code in (200, 204)
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(idle.id)


def test_an_expired_environment_from_the_pool_is_removed_by_the_reconciler(platform: Platform) -> None:
    wait_ready(platform)
    env = platform.tenant.post("/v1/environments", json={"image": PYTHON, "lease_s": 2}).json()
    container = docker.from_env().containers.get(f"moorage-{env['id']}")
    assert container.labels["moorage.role"] == POOL_ROLE  # it came from the pool
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            docker.from_env().containers.get(container.id)
        except docker.errors.NotFound:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the expired environment's container is still there")
    assert platform.tenant.get(f"/v1/environments/{env['id']}").status_code == 404
    network = docker.from_env().networks.get(f"moorage-t-{platform.tenant_name}")
    assert container.id not in (network.attrs.get("Containers") or {})
