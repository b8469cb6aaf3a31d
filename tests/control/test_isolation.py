"""Strict tenant isolation, checked over the live route table.

Every route under /v1 that addresses a tenant resource by path parameter is called by
tenant B with tenant A's identifiers (ids and names): the answer must be 404, and A's
data must be unchanged. New routes are covered automatically; a route with a path
parameter this file cannot fill makes the test fail, so it is never skipped silently.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.ids import new_id
from control.security.scopes import TENANT_SCOPES
from control.settings import Settings
from control.store.repositories.volumes import VolumeRepository
from tests.conftest import Caller, WorldSnapshot, environment_without_container, shared_world

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")

# Bodies valid enough to reach the handler, so that 404 (not 422) is what B sees.
SAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/apps/{app}"): {"description": "changed by B"},
    ("PUT", "/v1/apps/{app}/env"): {"vars": {"FROM_B": "x"}},
    ("PATCH", "/v1/apps/{app}/env"): {"vars": {"FROM_B": "x"}},
    ("PUT", "/v1/apps/{app}/env/{name}"): {"value": "from-b"},
    ("POST", "/v1/apps/{app}/deployments"): {"git": {"url": "https://127.0.0.1:9/nonexistent/from-b.git", "ref": "main"}},
    ("POST", "/v1/apps/{app}/rollback"): {"release": "v1"},
    ("POST", "/v1/apps/{app}/links"): {"database": "secret-db"},
    ("POST", "/v1/databases/{db}/backups/{backup}/restore"): {"target": "secret-db"},
    ("POST", "/v1/apps/{app}/runs"): {"command": ["true"]},
    ("POST", "/v1/apps/{app}/cron"): {"name": "from-b", "schedule": "0 4 * * *", "command": ["true"]},
    ("PATCH", "/v1/apps/{app}/cron/{schedule}"): {"enabled": False},
    ("POST", "/v1/apps/{app}/volumes"): {"name": "from-b", "mount_path": "/from-b", "size_mb": 1},
    ("POST", "/v1/apps/{app}/domains"): {"hostname": "from-b.example.com"},
    ("PATCH", "/v1/databases/{db}"): {"backup_retention": 1},
    ("POST", "/v1/snapshots/{snapshot}/fork"): {"name": "from-b"},
    ("POST", "/v1/environments/{env}/exec"): {"command": ["cat", "/workspace/secret"]},
}


def _world_settings(data_dir: Path) -> Settings:
    # No job workers: A's database below must not really be provisioned on this host.
    return Settings(data_dir=data_dir, base_domain="apps.test", log_level="info").with_overrides(
        git_allowed_networks="127.0.0.0/8", job_workers=0
    )


def _tenant_routes() -> list[tuple[str, str]]:
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="moorage-routes-"))))
    found = []
    for route in app.routes:
        for handler in route.route_handlers:
            if handler.opt.get("access") not in TENANT_SCOPES or not _PARAM.search(route.path):
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, _PARAM.sub(r"{\1}", route.path)))
    return found


TENANT_ROUTES = _tenant_routes()


def test_the_route_table_was_read() -> None:
    assert ("GET", "/v1/apps/{app}") in TENANT_ROUTES
    assert ("DELETE", "/v1/keys/{key_id}") in TENANT_ROUTES


@pytest.fixture
def tenants(client: TestClient[Litestar], world_snapshot: WorldSnapshot) -> tuple[Caller, Caller, dict[str, list[str]]]:
    """A with one of every resource, B with every scope (made once for the module; each test calls a copy)."""
    alpha, beta, values = world_snapshot.made
    return replace(alpha, client=client), replace(beta, client=client), values


def _build_tenants(
    _operator: Caller, new_tenant: Callable[[str, list[str]], Caller]
) -> tuple[Caller, Caller, dict[str, list[str]]]:
    alpha = new_tenant("alpha", sorted(TENANT_SCOPES))
    beta = new_tenant("beta", sorted(TENANT_SCOPES))
    app = alpha.post("/v1/apps", json={"name": "secret-app"}).json()
    beta.post("/v1/apps", json={"name": "beta-app"})
    alpha.request("PUT", f"/v1/apps/{app['id']}/env/API_TOKEN", json={"value": "alpha-only"})
    deployment = alpha.post(
        f"/v1/apps/{app['id']}/deployments", json={"git": {"url": "https://127.0.0.1:9/nonexistent/repo.git", "ref": "main"}}
    )
    assert deployment.status_code == 202, deployment.text
    database = alpha.post("/v1/databases", json={"name": "secret-db", "engine": "postgres"}).json()
    managed = alpha.client.app.state.services.databases  # what the jobs would record, without Docker
    managed.databases.mark(database["id"], "available", expect=("provisioning",))
    backup = alpha.post(f"/v1/databases/{database['id']}/backups").json()
    managed.backups.mark(backup["id"], "succeeded", file_name=f"{backup['id']}.pgdump", size=1, sha256="0" * 64)
    restore = alpha.post(f"/v1/databases/{database['id']}/backups/{backup['id']}/restore", json={})
    link = alpha.post(f"/v1/apps/{app['id']}/links", json={"database": "secret-db"})
    assert restore.status_code == 202 and link.status_code == 201, (restore.text, link.text)
    releases = alpha.client.app.state.services.deploys.releases  # what a deploy would leave, without Docker
    release = releases.create(
        tenant_id=alpha.tenant_id,
        app_id=app["id"],
        deployment_id=deployment.json()["id"],
        image_id="sha256:" + "0" * 64,
        image_tag="secret-app:v1",
        env_version=0,
        port=8080,
        health_check_path="/",
    )
    releases.make_current(release, [("0" * 64, "secret-app-v1")])
    run = alpha.post(f"/v1/apps/{app['id']}/runs", json={"command": ["true"]})
    schedule = alpha.post(f"/v1/apps/{app['id']}/cron", json={"name": "nightly", "schedule": "0 3 * * *", "command": ["true"]})
    assert run.status_code == 202 and schedule.status_code == 201, (run.text, schedule.text)
    volume_id = new_id("vol")
    with alpha.client.app.state.services.db.write() as session:  # as the API records it, without storage on this host
        VolumeRepository(session, alpha.tenant_id).add(
            id=volume_id, app_id=app["id"], name="secret-data", mount_path="/data", size_mb=1, quota="enforced", status="ready"
        )
    domain = alpha.post(f"/v1/apps/{app['id']}/domains", json={"hostname": "secret.example.com"})
    assert domain.status_code == 201, domain.text
    preview = alpha.post(
        f"/v1/apps/{app['id']}/previews", json={"git": {"url": "https://127.0.0.1:9/nonexistent/repo.git", "ref": "main"}}
    )
    assert preview.status_code == 202, preview.text
    snapshot = alpha.post(f"/v1/apps/{app['id']}/snapshots")
    assert snapshot.status_code == 202, snapshot.text
    from control.store.repositories.snapshots import SnapshotRepository

    with alpha.client.app.state.services.db.write() as session:  # a fork as the API records it, without its job
        fork = SnapshotRepository(session, alpha.tenant_id).add_fork(
            id=new_id("frk"), snapshot_id=snapshot.json()["id"], app_id=app["id"], status="pending", plan="{}"
        )
    # Each path parameter, filled with A's real identifiers: by id and by name.
    values = {
        "app": [app["id"], app["name"]],
        "key_id": [alpha.key_id],
        "name": ["API_TOKEN"],
        "deployment": [deployment.json()["id"]],
        "db": [database["id"], database["name"]],
        "backup": [backup["id"]],
        "restore": [restore.json()["id"]],
        "link": [link.json()["id"]],
        "run": [run.json()["id"]],
        "schedule": ["nightly"],
        "volume": [volume_id, "secret-data"],
        "domain": [domain.json()["id"], "secret.example.com"],
        "preview": [preview.json()["id"], preview.json()["name"]],
        "snapshot": [snapshot.json()["id"]],
        "fork": [fork.id],
        "env": [environment_without_container(alpha)],
    }
    return alpha, beta, values


world_snapshot, settings = shared_world("isolation-world", _world_settings, _build_tenants)


def _fill(path: str, values: dict[str, list[str]]) -> list[str]:
    params = _PARAM.findall(path)
    missing = [p for p in params if p not in values]
    assert not missing, f"test_isolation cannot fill {missing} in {path}: add A's resource to the fixture"
    paths = [path]
    for param in params:
        paths = [p.replace("{" + param + "}", v) for p in paths for v in values[param]]
    return paths


@pytest.mark.parametrize(("method", "template"), TENANT_ROUTES, ids=[f"{m} {p}" for m, p in TENANT_ROUTES])
def test_other_tenants_resources_are_404(tenants, method: str, template: str) -> None:
    alpha, beta, values = tenants
    before = alpha.get("/v1/apps/secret-app").json()
    for path in _fill(template, values):
        body = SAMPLE_BODIES.get((method, template), {} if method in {"POST", "PUT", "PATCH"} else None)
        response = beta.request(method, path, json=body)
        assert response.status_code == 404, f"{method} {path} as tenant B: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/problem+json")
    assert alpha.get("/v1/apps/secret-app").json() == before  # nothing of A's changed
    assert alpha.get("/v1/whoami").status_code == 200  # A's key still works
