"""Operators create, list, suspend, resume and delete tenants."""

from __future__ import annotations

from tests.conftest import Caller
from tests.control.test_problems import assert_problem


def test_tenant_crud(operator: Caller) -> None:
    created = operator.post("/v1/tenants", json={"name": "acme", "display_name": "ACME Corp"})
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["id"].startswith("ten_") and tenant["status"] == "active"
    assert operator.get(f"/v1/tenants/{tenant['id']}").json() == tenant

    assert_problem(operator.post("/v1/tenants", json={"name": "acme"}), 409, "name-taken")
    assert_problem(operator.post("/v1/tenants", json={"name": "-bad-"}), 422, "validation-failed")

    suspended = operator.post(f"/v1/tenants/{tenant['id']}/suspend")
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    assert operator.post(f"/v1/tenants/{tenant['id']}/resume").json()["status"] == "active"

    assert operator.delete(f"/v1/tenants/{tenant['id']}").status_code == 204
    assert_problem(operator.get(f"/v1/tenants/{tenant['id']}"), 404, "not-found")
    assert_problem(operator.delete(f"/v1/tenants/{tenant['id']}"), 404, "not-found")


def test_listing_pages_through_every_tenant_once(operator: Caller) -> None:
    names = [f"t{i:02d}" for i in range(7)]
    for name in names:
        assert operator.post("/v1/tenants", json={"name": name}).status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = operator.get("/v1/tenants", params=params).json()
        seen += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names
    body = assert_problem(operator.get("/v1/tenants", params={"limit": 500}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "limit"


def test_deleting_a_tenant_that_owns_apps_is_refused(operator: Caller, tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    body = assert_problem(operator.delete(f"/v1/tenants/{tenant.tenant_id}"), 409, "tenant-not-empty")
    assert "1 app" in body["detail"]
    assert tenant.get("/v1/apps/web").status_code == 200  # nothing lost
    assert tenant.delete("/v1/apps/web").status_code == 204
    assert operator.delete(f"/v1/tenants/{tenant.tenant_id}").status_code == 204
    # Its keys went with it.
    assert_problem(tenant.get("/v1/apps"), 401, "unauthenticated")


def test_tenant_keys_cannot_manage_tenants(tenant: Caller) -> None:
    assert_problem(tenant.get("/v1/tenants"), 403, "operator-required")
    assert_problem(tenant.post("/v1/tenants", json={"name": "evil"}), 403, "operator-required")
