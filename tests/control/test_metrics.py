"""GET /metrics: operator-only by default, Prometheus text, counters that move."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from control.app import create_app
from control.settings import Settings
from tests.conftest import Caller
from tests.control.test_problems import assert_problem


def _samples(operator: Caller) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = operator.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_need_an_operator_key(client, tenant: Caller) -> None:
    assert_problem(client.get("/metrics"), 401, "unauthenticated")
    assert_problem(tenant.get("/metrics"), 403, "operator-required")


def test_metrics_can_be_public_by_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", metrics_public=True)
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and "moorage_http_requests_total" in response.text
        assert "ratelimit" not in response.headers  # public: no identity, no limit
    assert Settings.from_env({"MOORAGE_METRICS_PUBLIC": "true"}).metrics_public is True


def test_request_counters_use_route_templates(operator: Caller, tenant: Caller) -> None:
    before = _samples(operator)
    for name in ("one", "two", "three"):
        tenant.get(f"/v1/apps/{name}")  # three raw paths, one route
    tenant.get("/v1/no-such-route")
    after = _samples(operator)
    route = {"method": "GET", "route": "/v1/apps/{app}", "status": "404"}
    assert _value(after, "moorage_http_requests_total", **route) - _value(before, "moorage_http_requests_total", **route) == 3
    assert _value(after, "moorage_http_request_duration_seconds_count", **route) == 3
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert _value(after, "moorage_http_requests_total", **unmatched) == 1
    assert not any("one" in dict(labels).get("route", "") for _, labels in after)


def test_idempotency_counters(operator: Caller, tenant: Caller) -> None:
    key = {"Idempotency-Key": "metrics-1"}
    tenant.post("/v1/apps", json={"name": "web"}, headers=key)
    tenant.post("/v1/apps", json={"name": "web"}, headers=key)
    tenant.post("/v1/apps", json={"name": "other"}, headers=key)
    tenant.post("/v1/apps", json={"name": "web"}, headers={"Idempotency-Key": ""})
    samples = _samples(operator)
    for outcome in ("stored", "replayed", "key_reused", "invalid_key"):
        assert _value(samples, "moorage_idempotency_outcomes_total", outcome=outcome) == 1, outcome


def test_rate_limit_rejections_by_kind(app, operator: Caller, tenant: Caller) -> None:
    app.state.services.rate_limiter.clock = lambda: 0.0  # time stands still: budgets cannot refill
    operator.request("PUT", f"/v1/tenants/{tenant.tenant_id}/limits", json={"key_quota": 2, "tenant_quota": 3})
    issued = operator.post(f"/v1/tenants/{tenant.tenant_id}/keys", json={"scopes": ["read"]}).json()
    other = Caller(tenant.client, issued["token"], issued["id"], tenant.tenant_id)
    statuses = [tenant.get("/v1/whoami").status_code for _ in range(3)]  # the third: the key's budget
    statuses += [other.get("/v1/whoami").status_code for _ in range(2)]  # the second: the tenant's
    assert statuses == [200, 200, 429, 200, 429]
    samples = _samples(operator)
    assert _value(samples, "moorage_rate_limit_rejections_total", limit="key") == 1
    assert _value(samples, "moorage_rate_limit_rejections_total", limit="tenant") == 1
    assert _value(samples, "moorage_http_requests_total", method="GET", route="/v1/whoami", status="429") == 2
