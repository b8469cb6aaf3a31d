"""Deletes that finish, against the real engine, runsc and Traefik: a deleted app's hostname
answers 404 within a second, its containers and images are gone within two, and a deleted
tenant takes its network and images with it. The reconciler (every 2 s here) is not what
does it: the delete is."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import httpx
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
ROUTE_GONE_S = 1.0
CONTAINERS_GONE_S = 2.0


@pytest.fixture(scope="module")
def world(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Caller]]:
    tenant_name = f"del-{RUN_ID}"
    # A reconciler slower than the test: what is gone in time was removed by the delete itself.
    app = create_app(e2e_settings(tmp_path_factory.mktemp("deletes"), traefik, reconcile_interval_s=60))
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            yield Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik), operator
    finally:
        cleanup_tenant(tenant_name)


def _within(limit_s: float, done: Callable[[], bool]) -> float:
    """Seconds until ``done()``; fails past twice the limit (the caller compares with the limit)."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < limit_s * 2 + 5, "never happened"
        time.sleep(0.02)
    return time.monotonic() - started


def _deploy(platform: Platform, name: str) -> None:
    assert platform.tenant.post("/v1/apps", json={"name": name, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    body = platform.wait(name, platform.deploy(name, tar_gz(source(f"{name}-{RUN_ID}"))))
    assert body["status"] == "running", body
    assert platform.get(name).status_code == 200


def _images(client: docker.DockerClient, tenant_id: str, app: str = "") -> list[str]:
    prefix = f"moorage-apps/{tenant_id}/{app}"
    # The summary list: images.list() inspects each image and fails on one removed meanwhile.
    return [tag for image in client.api.images() for tag in image.get("RepoTags") or [] if tag.startswith(prefix)]


def test_a_deleted_app_stops_serving_at_once_and_leaves_nothing_running(world: tuple[Platform, Caller]) -> None:
    platform, _ = world
    _deploy(platform, "gone")
    _deploy(platform, "stays")
    client = docker.from_env()
    tenant_id = platform.tenant.tenant_id
    assert tenant_id and _images(client, tenant_id, "gone:")

    deleted = platform.tenant.request("DELETE", "/v1/apps/gone")
    answered = time.monotonic()
    assert deleted.status_code == 204, deleted.text
    route_s = _within(ROUTE_GONE_S, lambda: platform.get("gone").status_code == 404)

    def containers() -> list[str]:
        labels = [f"moorage.tenant={platform.tenant_name}", "moorage.app=gone"]
        return [c.name for c in client.containers.list(all=True, filters={"label": labels})]

    containers_s = _within(CONTAINERS_GONE_S, lambda: not containers())
    images_s = _within(CONTAINERS_GONE_S, lambda: not _images(client, tenant_id, "gone:"))
    print(f"\nafter the 204: 404 in {route_s:.2f}s, containers gone in {containers_s:.2f}s, images in {images_s:.2f}s")
    assert route_s < ROUTE_GONE_S
    assert time.monotonic() - answered < CONTAINERS_GONE_S + 1 and containers_s < CONTAINERS_GONE_S
    assert images_s < CONTAINERS_GONE_S
    r = platform.get("stays")
    assert r.status_code == 200 and f"stays-{RUN_ID}" in r.text, "another app of the tenant keeps serving"
    assert _images(client, tenant_id, "stays:")


def test_a_deleted_tenant_takes_its_network_and_images(world: tuple[Platform, Caller]) -> None:
    platform, operator = world
    client = docker.from_env()
    tenant_id = platform.tenant.tenant_id
    network = f"moorage-t-{platform.tenant_name}"
    assert client.networks.list(names=[network])
    refused = operator.request("DELETE", f"/v1/tenants/{tenant_id}")
    assert refused.status_code == 409 and refused.json()["code"] == "tenant-not-empty"
    for app in platform.tenant.get("/v1/apps").json()["items"]:
        assert platform.tenant.request("DELETE", f"/v1/apps/{app['name']}").status_code == 204
    assert operator.request("DELETE", f"/v1/tenants/{tenant_id}").status_code == 204

    def leftovers() -> list[str]:
        networks = [n.name for n in client.networks.list(names=[network]) if n.name == network]
        return networks + _images(client, tenant_id or "")

    gone_s = _within(CONTAINERS_GONE_S, lambda: not leftovers())
    print(f"\ntenant deleted: network and images gone in {gone_s:.2f}s")
    assert gone_s < CONTAINERS_GONE_S + 1  # the network waits for the last sandbox to let go of it
    assert httpx.get(platform.traefik.url + "/", headers={"Host": platform.host("stays")}).status_code == 404
