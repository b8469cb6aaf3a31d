"""A preview of a git ref against the real engine, runsc and Traefik: built from a branch
served by a real git server (``git http-backend``), it answers at its own host with its own
content and env override while the app keeps serving its own from the same container; once
its TTL runs out the reconciler deletes it: 404 through Traefik, no container, no image, API
404. Another tenant gets 404 for it throughout."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.git_server import GIT, git_http_server, make_repo
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
TTL_S = 45  # the build and the checks fit in it, with room on a busy host
RECONCILE_S = 2


@dataclass
class World:
    platform: Platform
    other: Caller
    git_url: str


def _branch(bare: Path, work: Path, branch: str, files: dict[str, str]) -> None:
    """``branch`` of ``bare``: ``files`` committed on top of main."""
    subprocess.run([*GIT, "-C", str(work), "checkout", "-qb", branch], check=True, capture_output=True)
    for rel, text in files.items():
        (work / rel).write_text(text)
    for cmd in (["add", "-A"], ["commit", "-qm", branch], ["push", "-q", str(bare), branch]):
        subprocess.run([*GIT, "-C", str(work), *cmd], check=True, capture_output=True)


@pytest.fixture(scope="module")
def world(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """App ``site`` (GREETING=from-app) deployed from an upload; a git server whose ``feature``
    branch holds another version of it."""
    root = tmp_path_factory.mktemp("preview-repos")
    bare = make_repo(root, "site", source(f"main-{RUN_ID}"))
    _branch(bare, root / "site-work", "feature", source(f"feature-{RUN_ID}"))
    tenant_name = f"pv-{RUN_ID}"
    settings = e2e_settings(
        tmp_path_factory.mktemp("previews"),
        traefik,
        git_allow_http=True,
        git_allowed_networks="127.0.0.0/8",
        reconcile_interval_s=RECONCILE_S,
    )
    app = create_app(settings)
    try:
        with git_http_server(root) as git_port, TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            callers = []
            for name in (tenant_name, f"pv-other-{RUN_ID}"):
                made = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{made['id']}/keys", json={"scopes": ["admin"]}).json()
                callers.append(Caller(client, key["token"], key["id"], made["id"]))
            platform = Platform(app, client, callers[0], tenant_name, traefik)
            c = platform.tenant
            assert c.post("/v1/apps", json={"name": "site", "port": 8080}).status_code == 201
            assert c.request("PUT", "/v1/apps/site/env/GREETING", json={"value": "from-app"}).status_code == 200
            deployed = platform.wait("site", platform.deploy("site", tar_gz(source(f"app-{RUN_ID}"))))
            assert deployed["status"] == "running", deployed
            yield World(platform, callers[1], f"http://127.0.0.1:{git_port}/site.git")
    finally:
        cleanup_tenant(tenant_name)
        cleanup_tenant(f"pv-other-{RUN_ID}")


def _containers(tenant: str, app: str) -> list[Any]:
    client = docker.from_env()
    try:
        return client.containers.list(all=True, filters={"label": [f"moorage.tenant={tenant}", f"moorage.app={app}"]})
    finally:
        client.close()


def _images_of(deployment_id: str) -> list[str]:
    """Tags of the images built for ``deployment_id`` (its id is in each tag)."""
    client = docker.from_env()
    try:
        # Summaries: docker-py's images.list() inspects each image and fails on one the
        # reconciler removed in between.
        return [tag for image in client.api.images() for tag in image.get("RepoTags") or [] if deployment_id in tag]
    finally:
        client.close()


def _until(what: str, check: Any, timeout: float, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(step)


def test_a_preview_of_a_git_ref_serves_its_own_content_beside_the_app_and_is_gone_after_its_ttl(world: World) -> None:
    platform, tenant = world.platform, world.platform.tenant
    app_before = _containers(platform.tenant_name, "site")
    assert [c.status for c in app_before] == ["running"]
    releases_before = tenant.get("/v1/apps/site/releases").json()

    started = time.monotonic()
    created = tenant.post(
        "/v1/apps/site/previews",
        json={"git": {"url": world.git_url, "ref": "feature"}, "ttl_s": TTL_S, "env": {"GREETING": "from-preview"}},
    )
    assert created.status_code == 202, created.text
    preview = created.json()
    name, deployment_id = preview["name"], preview["deployment"]["id"]
    assert name.startswith("site--") and preview["url"] == f"http://{name}.{platform.tenant_name}.apps.test"

    done = platform.wait(preview["id"], deployment_id)  # its deployments are readable at its own id
    ready_s = time.monotonic() - started
    log = tenant.get(f"/v1/apps/{preview['id']}/deployments/{deployment_id}/logs").text
    assert done["status"] == "running", (done, log[-3000:])
    assert tenant.get(f"/v1/apps/site/previews/{name}").json()["status"] == "running"

    served = _until("the preview serves through Traefik", lambda: (r := platform.get(name)).status_code == 200 and r, 20)
    assert served.text == f"version=feature-{RUN_ID} greeting=from-preview\n"
    assert platform.get("site").text == f"version=app-{RUN_ID} greeting=from-app\n"  # the app serves its own
    [container] = _containers(platform.tenant_name, name)
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    assert [m for m in container.attrs["Mounts"] if m["Type"] == "volume"] == []  # no volumes (the CA bundle is a bind)
    assert [c.id for c in _containers(platform.tenant_name, "site")] == [c.id for c in app_before]
    assert tenant.get("/v1/apps/site/releases").json() == releases_before
    assert tenant.get("/v1/apps/site/env?reveal=true").json()["vars"][0]["value"] == "from-app"
    assert _images_of(deployment_id)
    assert world.other.get(f"/v1/apps/site/previews/{preview['id']}").status_code == 404
    assert world.other.get(f"/v1/apps/{preview['id']}/deployments/{deployment_id}").status_code == 404

    expires = datetime.fromisoformat(preview["expires_at"].replace("Z", "+00:00"))
    left = expires.timestamp() - time.time()
    assert left > 0, f"the build took {ready_s:.0f}s, past the preview's TTL of {TTL_S}s"
    assert platform.get(name).status_code == 200  # still serving before its TTL
    time.sleep(left)
    gone = _until(
        "the preview is deleted after its TTL",
        lambda: tenant.get(f"/v1/apps/site/previews/{preview['id']}").status_code == 404,
        RECONCILE_S * 3 + 5,
        step=0.2,
    )
    late_s = time.time() - expires.timestamp()
    assert gone
    assert _until("its route is gone", lambda: platform.get(name).status_code == 404, 10)
    assert _until("its container is gone", lambda: _containers(platform.tenant_name, name) == [], 30)
    assert _until("its image is gone", lambda: _images_of(deployment_id) == [], 30)
    assert tenant.get("/v1/apps/site/previews").json() == {"items": []}
    assert platform.get("site").text == f"version=app-{RUN_ID} greeting=from-app\n"
    assert [c.id for c in _containers(platform.tenant_name, "site")] == [c.id for c in app_before]
    print(
        f"\npreview e2e: created to serving {ready_s:.1f}s; deleted {late_s:.1f}s after its TTL (reconcile every {RECONCILE_S}s)"
    )
