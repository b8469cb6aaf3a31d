"""Authorization matrix over the live route table: every endpoint × every kind of caller.

Callers: no key, a revoked key, tenant keys holding exactly one scope (read, deploy,
admin, inference), an operator key, a node token, and a key of *another* tenant with
every scope. Each route's ``opt["access"]`` says which of them may call it:

* allowed            → the call is carried out or refused for a reason other than
                       identity (2xx, or a 4xx that is neither 401 nor 403; never 5xx);
* wrong scope        → 403 ``insufficient-scope``; tenant route with an operator key →
                       403 ``tenant-key-required``; operator route with a tenant key →
                       403 ``operator-required``;
* no / revoked key   → 401; node routes refuse every API key with 401;
* another tenant's   → 404 for every tenant route that names a resource in its path.

Every refusal is ``application/problem+json``. Routes come from ``create_app``'s table,
so new endpoints are covered automatically; a route whose access value this file does
not know fails the test instead of being skipped.
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

from control.api.auth import PUBLIC_PATHS
from control.api.node_auth import NODE_ACCESS
from control.app import create_app
from control.security.scopes import (
    ANY_KEY_ACCESS,
    OPERATOR_ACCESS,
    TENANT_SCOPES,
    USAGE_ACCESS,
    KeyScope,
    alternatives,
    effective,
)
from control.settings import Settings
from tests.conftest import Caller, WorldSnapshot, environment_without_container, shared_world

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
PUBLIC = "public"  # no access declared: a route under PUBLIC_PATHS (health, OpenAPI)
# Bodies valid enough to get past validation, so the other tenant meets the lookup (404).
SAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/apps/{app}"): {"description": "changed"},
    ("PUT", "/v1/apps/{app}/env"): {"vars": {"CHANGED": "x"}},
    ("PATCH", "/v1/apps/{app}/env"): {"vars": {"CHANGED": "x"}},
    ("PUT", "/v1/apps/{app}/env/{name}"): {"value": "changed"},
    ("POST", "/v1/apps/{app}/deployments"): {"git": {"url": "https://127.0.0.1:9/nonexistent/other.git", "ref": "main"}},
    ("POST", "/v1/apps/{app}/rollback"): {"release": "v1"},
    ("POST", "/v1/apps/{app}/previews"): {"git": {"url": "https://127.0.0.1:9/nonexistent/other.git", "ref": "main"}},
    ("POST", "/v1/apps/{app}/previews/{preview}/deployments"): {"git": {"url": "https://127.0.0.1:9/nonexistent/other.git"}},
    ("POST", "/v1/apps/{app}/links"): {"database": "alpha-db"},
    ("POST", "/v1/apps/{app}/runs"): {"command": ["true"]},
    ("POST", "/v1/environments/{env}/exec"): {"command": ["true"]},
    ("POST", "/v1/apps/{app}/cron"): {"name": "another", "schedule": "0 4 * * *", "command": ["true"]},
    ("PATCH", "/v1/apps/{app}/cron/{schedule}"): {"enabled": False},
    ("POST", "/v1/apps/{app}/domains"): {"hostname": "other.example.com"},
    ("PATCH", "/v1/databases/{db}"): {"backup_retention": 2},
    # Past the schema, refused by the rules after the app's lookup: no storage is made on this host.
    ("POST", "/v1/apps/{app}/volumes"): {"name": "probe", "mount_path": "/proc/probe", "size_mb": 1},
    ("PUT", "/v1/tenants/{tenant_id}/storage-limits"): {"max_volumes": 3},
    ("POST", "/v1/snapshots/{snapshot}/fork"): {"name": "alpha-fork"},
}
KNOWN_ACCESS = {PUBLIC, OPERATOR_ACCESS, ANY_KEY_ACCESS, NODE_ACCESS, USAGE_ACCESS, *TENANT_SCOPES}
SINGLE_SCOPE_CALLERS = [KeyScope.READ, KeyScope.DEPLOY, KeyScope.ADMIN, KeyScope.INFERENCE]
CALLERS = ["no-key", "revoked-key", "other-tenant", *SINGLE_SCOPE_CALLERS, "operator", "node"]


def _access_of(path: str, opt: dict[str, Any]) -> str:
    access = opt.get("access")
    if access is None and (opt.get("public") or any(re.match(p, path) for p in PUBLIC_PATHS)):
        return PUBLIC
    return str(access)


def _routes() -> list[tuple[str, str, str]]:
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="moorage-authz-"))))
    found = []
    for route in app.routes:
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, _PARAM.sub(r"{\1}", route.path), _access_of(route.path, handler.opt)))
    return sorted(set(found), key=lambda r: (r[1], r[0]))


ROUTES = _routes()


def test_every_route_declares_a_known_access() -> None:
    unknown = [(m, p, a) for m, p, a in ROUTES if a not in KNOWN_ACCESS]
    assert not unknown, f"routes with an access value the authz matrix does not know: {unknown}"
    assert len(ROUTES) > 50 and {a for *_, a in ROUTES} >= {PUBLIC, OPERATOR_ACCESS, NODE_ACCESS, *TENANT_SCOPES}


def _world_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, base_domain="apps.test", log_level="info").with_overrides(
        git_allowed_networks="127.0.0.0/8", job_workers=0, reconcile_interval_s=0
    )  # nothing really deployed


@pytest.fixture
def world(client: TestClient[Litestar], world_snapshot: WorldSnapshot) -> tuple[dict[str, Caller | None], dict[str, str]]:
    """Tenant alpha with one key per scope and one of every resource; beta with every scope
    (made once for the module; each test calls a copy)."""
    callers, values = world_snapshot.made
    return {name: None if c is None else replace(c, client=client) for name, c in callers.items()}, values


def _build_world(
    operator: Caller, new_tenant: Callable[[str, list[str]], Caller]
) -> tuple[dict[str, Caller | None], dict[str, str]]:
    alpha = new_tenant("alpha", ["admin"])
    callers: dict[str, Caller | None] = {KeyScope.ADMIN: alpha, "operator": operator, "no-key": None}
    for scope in (KeyScope.READ, KeyScope.DEPLOY, KeyScope.INFERENCE):
        key = operator.post(f"/v1/tenants/{alpha.tenant_id}/keys", json={"scopes": [scope], "name": scope}).json()
        callers[scope] = Caller(operator.client, key["token"], key["id"], alpha.tenant_id)
    victim = operator.post(f"/v1/tenants/{alpha.tenant_id}/keys", json={"scopes": ["read"], "name": "victim"}).json()
    revoked = operator.post(f"/v1/tenants/{alpha.tenant_id}/keys", json={"scopes": ["admin"], "name": "revoked"}).json()
    assert operator.delete(f"/v1/tenants/{alpha.tenant_id}/keys/{revoked['id']}").status_code in (200, 204)
    callers["revoked-key"] = Caller(operator.client, revoked["token"], revoked["id"], alpha.tenant_id)
    callers["other-tenant"] = new_tenant("beta", sorted(TENANT_SCOPES))

    app = alpha.post("/v1/apps", json={"name": "alpha-app"}).json()
    alpha.request("PUT", f"/v1/apps/{app['id']}/env/API_TOKEN", json={"value": "alpha-only"})
    deployment = alpha.post(
        f"/v1/apps/{app['id']}/deployments", json={"git": {"url": "https://127.0.0.1:9/nonexistent/repo.git", "ref": "main"}}
    )
    database = alpha.post("/v1/databases", json={"name": "alpha-db", "engine": "postgres"}).json()
    managed = alpha.client.app.state.services.databases  # what the jobs would record, without Docker
    managed.databases.mark(database["id"], "available", expect=("provisioning",))
    backup = alpha.post(f"/v1/databases/{database['id']}/backups").json()
    managed.backups.mark(backup["id"], "succeeded", file_name=f"{backup['id']}.pgdump", size=1, sha256="0" * 64)
    restore = alpha.post(f"/v1/databases/{database['id']}/backups/{backup['id']}/restore", json={})
    link = alpha.post(f"/v1/apps/{app['id']}/links", json={"database": "alpha-db"})
    volume = _volume_without_storage(alpha, app["id"])
    node = operator.post("/v1/nodes", json={"name": "gpu-1"})
    releases = alpha.client.app.state.services.deploys.releases  # what a deploy would leave, without Docker
    release = releases.create(
        tenant_id=alpha.tenant_id,
        app_id=app["id"],
        deployment_id=deployment.json()["id"],
        image_id="sha256:" + "0" * 64,
        image_tag="alpha-app:v1",
        env_version=0,
        port=8080,
        health_check_path="/",
    )
    releases.make_current(release, [("0" * 64, "alpha-app-v1")])
    run = alpha.post(f"/v1/apps/{app['id']}/runs", json={"command": ["true"]})
    schedule = alpha.post(f"/v1/apps/{app['id']}/cron", json={"name": "nightly", "schedule": "0 3 * * *", "command": ["true"]})
    assert run.status_code == 202 and schedule.status_code == 201, (run.text, schedule.text)
    assert deployment.status_code == 202 and restore.status_code == 202, (deployment.text, restore.text)
    assert link.status_code == 201 and node.status_code == 201, (link.text, node.text)
    callers["node"] = Caller(operator.client, node.json()["token"])
    domain = alpha.post(f"/v1/apps/{app['id']}/domains", json={"hostname": "alpha.example.com"})
    assert domain.status_code == 201, domain.text
    preview = alpha.post(
        f"/v1/apps/{app['id']}/previews", json={"git": {"url": "https://127.0.0.1:9/nonexistent/preview.git", "ref": "main"}}
    )
    assert preview.status_code == 202, preview.text
    snapshot = alpha.post(f"/v1/apps/{app['id']}/snapshots")
    assert snapshot.status_code == 202, snapshot.text
    fork = _fork_without_data(alpha, snapshot.json()["id"])
    registration_token = operator.post("/v1/registration-tokens", json={"uses": 1})
    assert registration_token.status_code == 201, registration_token.text
    values = {
        "app": app["id"],
        "name": "API_TOKEN",
        "deployment": deployment.json()["id"],
        "db": database["id"],
        "backup": backup["id"],
        "restore": restore.json()["id"],
        "link": link.json()["id"],
        "run": run.json()["id"],
        "schedule": "nightly",
        "volume": volume,
        "domain": domain.json()["id"],
        "token": domain.json()["verification"]["url"].rsplit("/", 1)[1],
        "key_id": victim["id"],
        "tenant_id": alpha.tenant_id,
        "token_id": registration_token.json()["id"],
        "node": node.json()["node"]["id"],
        "path": "openapi.json",
        "preview": preview.json()["id"],
        "snapshot": snapshot.json()["id"],
        "fork": fork,
        "env": environment_without_container(alpha),
    }
    return callers, values


def _volume_without_storage(alpha: Caller, app_id: str) -> str:
    """A volume of alpha's app as the API records it, without making storage on this host."""
    from control.ids import new_id
    from control.store.repositories.volumes import VolumeRepository

    services = alpha.client.app.state.services
    volume_id = new_id("vol")
    with services.db.write() as session:
        VolumeRepository(session, alpha.tenant_id).add(
            id=volume_id, app_id=app_id, name="alpha-data", mount_path="/data", size_mb=1, quota="enforced", status="ready"
        )
    return volume_id


def _fork_without_data(alpha: Caller, snapshot_id: str) -> str:
    """A fork of alpha's snapshot as the API records it (the snapshot's capture never runs here)."""
    from control.ids import new_id
    from control.store.repositories.snapshots import SnapshotRepository

    services = alpha.client.app.state.services
    target = alpha.post("/v1/apps", json={"name": "alpha-fork-target"}).json()
    with services.db.write() as session:
        fork = SnapshotRepository(session, alpha.tenant_id).add_fork(
            id=new_id("frk"), snapshot_id=snapshot_id, app_id=target["id"], status="pending", plan="{}"
        )
    return fork.id


world_snapshot, settings = shared_world("authz-world", _world_settings, _build_world)


def _fill(template: str, values: dict[str, str]) -> str:
    missing = [p for p in _PARAM.findall(template) if p not in values]
    assert not missing, f"the authz matrix cannot fill {missing} in {template}: add the resource to the world fixture"
    return _PARAM.sub(lambda m: values[m.group(1)], template)


def expected(access: str, caller: str, has_params: bool) -> tuple[str, int | None, str | None]:
    """('allowed', None, None) or ('refused', status, code or None)."""
    if access == PUBLIC:
        return ("allowed", None, None)
    if access == NODE_ACCESS:
        return ("allowed", None, None) if caller == "node" else ("refused", 401, None)
    if caller in ("no-key", "revoked-key", "node"):  # a node token is no API key
        return ("refused", 401, None)
    if access == ANY_KEY_ACCESS:
        return ("allowed", None, None)
    if access == OPERATOR_ACCESS:
        return ("allowed", None, None) if caller == "operator" else ("refused", 403, "operator-required")
    # a tenant scope
    if caller == "operator":
        return ("refused", 403, "tenant-key-required")
    if caller == "other-tenant":
        return ("refused", 404, None) if has_params else ("allowed", None, None)
    if any(scope in effective([caller]) for scope in alternatives(access)):  # "read|inference": either one
        return ("allowed", None, None)
    return ("refused", 403, "insufficient-scope")


@pytest.mark.parametrize(("method", "template", "access"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_route_answers_every_caller_as_its_access_says(world, method: str, template: str, access: str) -> None:
    assert access in KNOWN_ACCESS, f"{method} {template}: unknown access {access!r}"
    callers, values = world
    path = _fill(template, values)
    has_params = bool(_PARAM.search(template))
    client = callers["operator"].client  # type: ignore[union-attr]
    body = SAMPLE_BODIES.get((method, template), {} if method in {"POST", "PUT", "PATCH"} else None)
    wrong = []
    for name in CALLERS:  # operator and node last: their calls may delete the tenant or the node
        caller = callers[name]
        headers = {"Authorization": f"Bearer {caller.token}"} if caller else {}
        response = client.request(method, path, headers=headers, json=body)
        outcome, status, code = expected(access, name, has_params)
        problem = response.headers.get("content-type", "").startswith("application/problem+json")
        got = f"{response.status_code} {response.text[:200]}"
        if response.status_code >= 500:
            wrong.append(f"{name}: server error {got}")
        elif outcome == "allowed" and response.status_code in (401, 403):
            wrong.append(f"{name}: should be allowed, got {got}")
        elif outcome == "refused" and (response.status_code != status or (code and response.json().get("code") != code)):
            wrong.append(f"{name}: expected {status} {code or ''}, got {got}")
        elif response.status_code >= 400 and not problem:
            wrong.append(f"{name}: {response.status_code} without application/problem+json")
    assert not wrong, f"{method} {path} (access {access}):\n" + "\n".join(wrong)


def test_the_matrix_knows_what_it_expects() -> None:
    """The expectations themselves, for the scope lattice (admin ⊇ deploy ⊇ read; inference alone)."""
    assert expected("read", KeyScope.ADMIN, False)[0] == "allowed"
    assert expected("admin", KeyScope.DEPLOY, False) == ("refused", 403, "insufficient-scope")
    assert expected("read", KeyScope.INFERENCE, False) == ("refused", 403, "insufficient-scope")
    assert expected("inference", KeyScope.ADMIN, False) == ("refused", 403, "insufficient-scope")
    assert expected("deploy", "other-tenant", True) == ("refused", 404, None)
