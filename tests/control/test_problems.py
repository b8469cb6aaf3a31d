"""Every error is RFC 9457 problem+json with a stable code, a next step and a request id."""

from __future__ import annotations

import httpx
import pytest
from litestar import get

from tests.conftest import Caller

PROBLEM_KEYS = {"type", "title", "status", "code", "detail", "instance", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"/problems/{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


def test_400_malformed_json(tenant: Caller) -> None:
    response = tenant.post("/v1/apps", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed-request")


def test_401_without_key(client) -> None:
    response = client.get("/v1/apps")
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer mrg_live_key_01aaaaaaaaaaaaaaaaaaaaaaaa_" + "x" * 43],
)
def test_401_for_bad_credentials(client, header: str) -> None:
    assert_problem(client.get("/v1/apps", headers={"Authorization": header}), 401, "unauthenticated")


def test_403_missing_scope(new_tenant) -> None:
    reader = new_tenant("readonly", ["read"])
    body = assert_problem(reader.post("/v1/apps", json={"name": "web"}), 403, "insufficient-scope")
    assert "deploy" in body["detail"]


def test_404_unknown_route_and_resource(tenant: Caller) -> None:
    assert_problem(tenant.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(tenant.get("/v1/apps/app_01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not-found")


def test_405_names_allowed_methods(tenant: Caller) -> None:
    response = tenant.request("PUT", "/v1/apps")
    assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["allow"]


def test_422_names_the_fields(tenant: Caller) -> None:
    body = assert_problem(tenant.post("/v1/apps", json={"name": "Not A Label"}), 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == ["name"]
    body = assert_problem(tenant.post("/v1/apps", json={"name": "ok", "port": 70000}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "port"
    body = assert_problem(tenant.post("/v1/apps", json={"name": "ok", "colour": "red"}), 422, "validation-failed")
    assert "colour" in body["errors"][0]["message"]
    assert_problem(tenant.post("/v1/apps", json={}), 422, "validation-failed")


@pytest.mark.own_app
def test_500_hides_the_traceback(app, tenant: Caller) -> None:
    @get("/v1/test-boom", opt={"access": "read"}, sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("secret internals: /etc/shadow")

    app.register(boom)
    body = assert_problem(tenant.get("/v1/test-boom"), 500, "internal-error")
    assert "shadow" not in body["detail"]


def test_request_id_is_echoed_when_safe(client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "agent-run-42"}).headers["x-request-id"] == "agent-run-42"
    unsafe = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"].startswith("req_")
