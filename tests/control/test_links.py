"""App ↔ database links: default names per engine, validation, conflicts with env vars and
other links, env_version bumps, in-memory resolution, tenant scoping."""

from __future__ import annotations

import pytest
from litestar import Litestar

from tests.conftest import Caller
from tests.control import test_databases as shared
from tests.control.test_databases import create, password_of

settings = shared.settings  # the same fixture: no job workers


def env_version(caller: Caller, app: str) -> int:
    return int(caller.get(f"/v1/apps/{app}/env").json()["env_version"])


@pytest.fixture
def web(tenant: Caller) -> str:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    return "web"


def test_links_default_by_engine_bump_env_version_and_resolve_in_memory(app: Litestar, tenant: Caller, web: str) -> None:
    pg = create(tenant, name="orders")
    create(tenant, name="cache", engine="redis", memory_mb=64)
    assert env_version(tenant, web) == 0
    first = tenant.post(f"/v1/apps/{web}/links", json={"database": pg["id"]})
    second = tenant.post(f"/v1/apps/{web}/links", json={"database": "cache"})
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert (first.json()["env_name"], second.json()["env_name"]) == ("DATABASE_URL", "REDIS_URL")
    assert first.json()["applies"] == "next-release" and env_version(tenant, web) == 2
    listed = tenant.get(f"/v1/apps/{web}/links").json()["items"]
    assert [(lk["database_name"], lk["engine"]) for lk in listed] == [("orders", "postgres"), ("cache", "redis")]
    app_id = tenant.get(f"/v1/apps/{web}").json()["id"]
    resolved = app.state.services.databases.links.resolve(tenant.tenant_id, app_id)
    assert resolved == {
        "DATABASE_URL": f"postgres://app:{password_of(tenant, 'orders')}@db-orders:5432/app",
        "REDIS_URL": f"redis://default:{password_of(tenant, 'cache')}@db-cache:6379/0",
    }
    for text in (tenant.get(f"/v1/apps/{web}/links").text, tenant.get(f"/v1/apps/{web}/env").text):
        assert password_of(tenant, "orders") not in text and "DATABASE_URL" not in tenant.get(f"/v1/apps/{web}/env").text
    assert tenant.delete(f"/v1/apps/{web}/links/{first.json()['id']}").status_code == 204
    assert env_version(tenant, web) == 3
    assert set(app.state.services.databases.links.resolve(tenant.tenant_id, app_id)) == {"REDIS_URL"}
    assert tenant.delete(f"/v1/apps/{web}/links/{first.json()['id']}").status_code == 404


@pytest.mark.parametrize("name", ["1BAD", "has-dash", "PORT", "MOORAGE_DB", "x" * 256])
def test_invalid_env_names_are_422(tenant: Caller, web: str, name: str) -> None:
    create(tenant, name="orders")
    r = tenant.post(f"/v1/apps/{web}/links", json={"database": "orders", "env_name": name})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "env_name"


def test_conflicts_with_env_vars_and_other_links_are_409(tenant: Caller, web: str) -> None:
    create(tenant, name="orders")
    create(tenant, name="reports")
    tenant.request("PUT", f"/v1/apps/{web}/env/DATABASE_URL", json={"value": "postgres://elsewhere"})
    clash = tenant.post(f"/v1/apps/{web}/links", json={"database": "orders"})
    assert clash.status_code == 409 and clash.json()["code"] == "env-name-taken"
    assert tenant.post(f"/v1/apps/{web}/links", json={"database": "orders", "env_name": "ORDERS_URL"}).status_code == 201
    twice = tenant.post(f"/v1/apps/{web}/links", json={"database": "orders", "env_name": "OTHER_URL"})
    assert twice.status_code == 409 and twice.json()["code"] == "link-conflict"
    same_name = tenant.post(f"/v1/apps/{web}/links", json={"database": "reports", "env_name": "ORDERS_URL"})
    assert same_name.status_code == 409 and "ORDERS_URL" in same_name.json()["detail"]


def test_links_stay_inside_the_tenant_and_skip_deleted_databases(app: Litestar, tenant: Caller, new_tenant, web: str) -> None:
    theirs = create(tenant, name="orders")
    other = new_tenant("other")
    other.post("/v1/apps", json={"name": "thief"})
    for ref in (theirs["id"], "orders"):
        assert other.post("/v1/apps/thief/links", json={"database": ref}).status_code == 404
    assert other.post(f"/v1/apps/{web}/links", json={"database": "orders"}).status_code == 404
    assert tenant.post("/v1/apps/nope/links", json={"database": "orders"}).status_code == 404
    assert tenant.delete("/v1/databases/orders").status_code == 202
    deleted = tenant.post(f"/v1/apps/{web}/links", json={"database": "orders"})
    assert deleted.status_code == 409 and deleted.json()["code"] == "database-deleted"


def test_deleting_a_linked_database_needs_force_which_removes_the_links(tenant: Caller, web: str) -> None:
    create(tenant, name="orders")
    link = tenant.post(f"/v1/apps/{web}/links", json={"database": "orders"}).json()
    refused = tenant.delete("/v1/databases/orders")
    assert refused.status_code == 409 and refused.json()["code"] == "database-linked" and link["id"] in refused.json()["detail"]
    before = env_version(tenant, web)
    assert tenant.delete("/v1/databases/orders?force=true").status_code == 202
    assert tenant.get(f"/v1/apps/{web}/links").json()["items"] == [] and env_version(tenant, web) == before + 1
