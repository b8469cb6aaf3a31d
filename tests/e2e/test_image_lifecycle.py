"""Images over an app's life, against the real engine, runsc and Traefik:

- after six deploys with ``kept_releases=3`` exactly three release images of the app are left,
  those of its three newest releases, pruned by the pass the last release's going live starts
  (the reconciler's own interval is longer than the test);
- a rollback to a pruned release is refused with 409 ``release-image-pruned``; one to a kept
  release runs;
- a failed build's untagged layers go at the next pass, the base image stays;
- the build cache is the tenant's own: a RUN step writing a random value gives the same value
  on the tenant's rebuild (``Using cache``) and a fresh one for another tenant building the
  identical source.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.domain.build_policy import LINEAGE_LABEL
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import BASE, source, tar_gz
from tests.e2e.conftest import TERMINAL, cleanup_tenant, e2e_settings
from tests.runtime.helpers import RUN_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]
KEPT = 3
PRUNED_WITHIN_S = 15.0
RANDOM_STEP = "RUN head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /cache-probe\n"


@dataclass
class Tenant:
    name: str
    caller: Caller

    @property
    def id(self) -> str:
        return str(self.caller.tenant_id)

    def deploy(self, app: str, files: dict[str, str], timeout: float = 180) -> dict:
        r = self.caller.post(f"/v1/apps/{app}/deployments", content=tar_gz(files), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 202, r.text
        return self.wait(app, r.json()["id"], timeout)

    def wait(self, app: str, deployment: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            body = self.caller.get(f"/v1/apps/{app}/deployments/{deployment}").json()
            if body["status"] in TERMINAL:
                return body
            time.sleep(0.2)
        raise AssertionError(f"deployment never finished: {body}")

    def log(self, app: str, deployment: str) -> str:
        return self.caller.get(f"/v1/apps/{app}/deployments/{deployment}/logs").text


@dataclass
class World:
    app: Litestar
    a: Tenant
    b: Tenant


@pytest.fixture(scope="module")
def world(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    names = (f"img-a-{RUN_ID}", f"img-b-{RUN_ID}")
    settings = e2e_settings(
        tmp_path_factory.mktemp("images"),
        traefik,
        kept_releases=KEPT,
        build_layer_grace_s=0,
        reconcile_interval_s=3600,  # only a release going live starts a pass here
        swap_drain_ms=0,
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenants = []
            for name in names:
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
                tenants.append(Tenant(name, Caller(client, key["token"], key["id"], tenant["id"])))
            yield World(app, *tenants)
    finally:
        for name in names:
            cleanup_tenant(name)


def _release_images(tenant: Tenant, app: str) -> set[str]:
    client = docker.from_env()
    try:
        labels = [f"moorage.tenant={tenant.name}", f"moorage.app={app}", "moorage.role=image"]
        return {image["Id"] for image in client.api.images(filters={"label": labels})}  # summaries: no inspect race
    finally:
        client.close()


def _build_layers(tenant: Tenant) -> list[str]:
    client = docker.from_env()
    try:
        return [row["Id"] for row in client.api.images(filters={"dangling": True, "label": f"{LINEAGE_LABEL}={tenant.id}"})]
    finally:
        client.close()


def _releases(tenant: Tenant, app: str) -> list[dict]:
    r = tenant.caller.get(f"/v1/apps/{app}/releases")
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_six_deploys_keep_three_images_and_a_pruned_release_cannot_be_rolled_back_to(world: World) -> None:
    a = world.a
    assert a.caller.post("/v1/apps", json={"name": "keep", "port": 8080}).status_code == 201
    for n in range(1, 7):
        done = a.deploy("keep", source(f"keep-v{n}"))
        assert done["status"] == "running", (done, a.log("keep", done["id"])[-2000:])
    releases = _releases(a, "keep")
    newest = {r["image_id"] for r in releases[-KEPT:]}
    assert len({r["image_id"] for r in releases}) == 6, "six builds, six images"
    deadline = time.monotonic() + PRUNED_WITHIN_S
    while _release_images(a, "keep") != newest and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _release_images(a, "keep") == newest, "exactly the three newest releases' images are left"
    assert [r["image_kept"] for r in releases] == [False, False, False, True, True, True]

    refused = a.caller.post("/v1/apps/keep/rollback", json={"release": "v2"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "release-image-pruned"
    assert "v4, v5" in refused.json()["detail"] and "deploy v2's source again" in refused.json()["detail"]
    assert len(a.caller.get("/v1/apps/keep/deployments").json()["items"]) == 6, "nothing was queued"

    back = a.caller.post("/v1/apps/keep/rollback", json={"release": "v4"})
    assert back.status_code == 202, back.text
    assert a.wait("keep", back.json()["id"])["status"] == "running"
    assert len(_release_images(a, "keep")) == KEPT, "v7 reuses v4's image: still three"


def test_a_failed_builds_layers_go_at_the_next_pass_and_the_base_image_stays(world: World) -> None:
    a = world.a
    assert a.caller.post("/v1/apps", json={"name": "broken", "port": 8080}).status_code == 201
    failing = source("broken", extra_steps="RUN echo step one > /one\nRUN exit 3\n")
    done = a.deploy("broken", failing)
    assert done["status"] == "failed", done
    layers = _build_layers(a)
    assert layers, "the failed build left its committed steps untagged"
    time.sleep(2.5)  # past the pass's clock slack (grace 0 here)
    report = world.app.state.services.deploys.reconciler.run_once()
    assert not report.errors, report.errors
    assert any(action.startswith("removed build layer") for action in report.actions), report.actions
    assert _build_layers(a) == []
    client = docker.from_env()
    try:
        assert client.images.get(BASE).tags, "the base image is untouched"
    finally:
        client.close()


def _probe_value(image_id: str) -> str:
    """The file the random RUN step wrote, read from the image without running it."""
    client = docker.from_env()
    container = client.containers.create(image_id, command=["true"])
    try:
        stream, _ = container.get_archive("/cache-probe")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("cache-probe")
            assert member is not None
            return member.read().decode()
    finally:
        container.remove(force=True)
        client.close()


def test_a_tenants_rebuild_hits_its_own_cache_and_another_tenant_shares_none_of_it(world: World) -> None:
    files = source(f"cache-{RUN_ID}", extra_steps=RANDOM_STEP)  # identical for both tenants
    for tenant in (world.a, world.b):
        assert tenant.caller.post("/v1/apps", json={"name": "cached", "port": 8080}).status_code == 201
    first = world.a.deploy("cached", files)
    again = world.a.deploy("cached", files)
    other = world.b.deploy("cached", files)
    assert [d["status"] for d in (first, again, other)] == ["running"] * 3, (first, again, other)
    values = [_probe_value(d["image"]) for d in (first, again, other)]
    assert len(values[0]) == 32, values
    assert values[1] == values[0], "tenant A's rebuild reused its RUN layer"
    assert values[2] != values[0], "tenant B ran the step itself: no layer of A's"
    again_log, other_log = world.a.log("cached", again["id"]), world.b.log("cached", other["id"])
    assert "Using cache" in again_log, again_log[-2000:]
    assert "Using cache" not in other_log, other_log[-2000:]
