"""Node enrollment, registration, heartbeats and operator controls, through the real app
(TestClient on a real SQLite file). Node tokens are their own kind of credential: API keys
cannot pass for them and they cannot pass for API keys."""

from __future__ import annotations

import time
from typing import get_args

import pytest

from control.domain.nodes import ENGINE_STATES, NodeStatus
from control.settings import Settings
from tests.conftest import Caller

REPORT = {
    "state": "healthy",
    "engine": "transformers",
    "base_url": "http://127.0.0.1:18001",
    "models": [{"name": "tiny", "engine_model": "/srv/models/tiny"}],
    "requests_in_flight": 2,
    "gpus": [{"index": 0, "used_mib": 1000, "total_mib": 8000}],
    "expert_load": {
        "tokens": 5,
        "experts": 4,
        "top_k": 2,
        "layers": [{"layer": 0, "load": [4, 3, 2, 1], "utilisation": [1.6, 1.2, 0.8, 0.4], "load_entropy": 0.92}],
    },
    "future_field": "ignored",
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", inference_node_stale_s=2, inference_breaker_reset_s=1, job_workers=0, reconcile_interval_s=0
    )


def _node(operator: Caller, name: str = "gpu-1") -> tuple[str, str]:
    response = operator.post("/v1/nodes", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["node"]["id"], response.json()["token"]


def _as_node(client, token: str | None, path: str, body: dict) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(path, json=body, headers=headers)


def test_enroll_register_heartbeat_and_read_back(operator: Caller) -> None:
    node_id, token = _node(operator)
    assert token.startswith(f"mrg_node_{node_id}_")
    listed = operator.get("/v1/nodes").json()["items"]
    assert [n["id"] for n in listed] == [node_id] and listed[0]["status"] == "unregistered"
    assert "token" not in listed[0] and "secret_hash" not in str(listed[0])

    ack = _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    assert ack.status_code == 200, ack.text
    assert operator.get(f"/v1/nodes/{node_id}").json()["status_reason"] is None  # healthy: nothing to explain
    assert ack.json() == {"id": node_id, "status": "healthy", "draining": False, "stale_after_s": 2}
    beat = _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "restarting", "restarts": 1})
    assert beat.status_code == 200 and beat.json()["status"] == "restarting"

    node = operator.get(f"/v1/nodes/{node_id}").json()
    assert node["models"] == REPORT["models"] and node["base_url"] == REPORT["base_url"]  # kept from registration
    assert node["state"] == "restarting" and node["report"]["restarts"] == 1 and node["breaker"] == "closed"
    assert "future_field" not in node["report"]


def test_a_silent_node_goes_stale(operator: Caller) -> None:
    node_id, token = _node(operator)
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    assert operator.get(f"/v1/nodes/{node_id}").json()["status"] == "healthy"
    time.sleep(2.2)
    assert operator.get(f"/v1/nodes/{node_id}").json()["status"] == "stale"


@pytest.mark.parametrize("token", [None, "", "mrg_node_garbage", "mrg_live_key_00000000000000000000000000_" + "x" * 43])
def test_missing_or_bad_node_tokens_are_401(operator: Caller, token: str | None) -> None:
    response = _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "node-token-invalid"


def test_api_keys_and_node_tokens_do_not_mix(operator: Caller, tenant: Caller) -> None:
    _node_id, token = _node(operator)
    for key in (operator.token, tenant.token):  # an API key is no node token ...
        assert _as_node(operator.client, key, "/v1/nodes/register", REPORT).status_code == 401
    as_key = operator.client.get("/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    assert as_key.status_code == 401  # ... and a node token is no API key
    assert tenant.get("/v1/nodes").json()["code"] == "operator-required"


def test_a_deleted_node_token_is_revoked(operator: Caller) -> None:
    node_id, token = _node(operator)
    assert _as_node(operator.client, token, "/v1/nodes/register", REPORT).status_code == 200
    assert operator.delete(f"/v1/nodes/{node_id}").status_code == 204
    refused = _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "healthy"})
    assert refused.status_code == 401 and refused.json()["code"] == "node-token-revoked"
    assert operator.get(f"/v1/nodes/{node_id}").status_code == 404
    assert operator.get("/v1/nodes").json()["items"] == []


def test_a_node_speaks_only_for_itself(operator: Caller) -> None:
    _first, token = _node(operator, "a")
    second, _ = _node(operator, "b")
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    response = _as_node(operator.client, token, f"/v1/nodes/{second}/heartbeat", {"state": "healthy"})
    assert response.status_code == 403 and response.json()["code"] == "node-mismatch"


def test_registration_rules(operator: Caller) -> None:
    node_id, token = _node(operator)
    early = _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "healthy"})
    assert early.status_code == 409 and early.json()["code"] == "node-not-registered"
    for base_url in ("http://8.8.8.8:8000", "http://0.0.0.0:8000", "file:///etc", "http://10.0.0.5:8000/v1"):
        refused = _as_node(operator.client, token, "/v1/nodes/register", {**REPORT, "base_url": base_url})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "base_url", base_url
    missing = _as_node(operator.client, token, "/v1/nodes/register", {"state": "healthy"})
    assert missing.status_code == 422
    assert {e["field"] for e in missing.json()["errors"]} == {"engine", "base_url", "models"}
    private = _as_node(operator.client, token, "/v1/nodes/register", {**REPORT, "base_url": "http://10.0.0.5:8000/"})
    assert private.status_code == 200


def test_drain_and_resume(operator: Caller) -> None:
    node_id, token = _node(operator)
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    drained = operator.post(f"/v1/nodes/{node_id}/drain")
    assert drained.status_code == 200 and drained.json()["status"] == "draining"
    beat = _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "healthy"})
    assert beat.json()["draining"] is True and beat.json()["status"] == "draining"  # the node is told
    assert operator.post(f"/v1/nodes/{node_id}/resume").json()["status"] == "healthy"
    assert operator.post("/v1/nodes/node_00000000000000000000000000/drain").status_code == 404


def test_heartbeat_figures_are_metrics(operator: Caller) -> None:
    node_id, token = _node(operator)
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    text = operator.get("/metrics").text
    assert f'moorage_inference_node_healthy{{node="{node_id}"}} 1.0' in text
    assert f'moorage_inference_node_requests_in_flight{{node="{node_id}",source="engine"}} 2.0' in text
    assert f'moorage_inference_node_gpu_memory_used_mib{{gpu="0",node="{node_id}"}} 1000.0' in text
    assert f'moorage_inference_expert_load_tokens{{expert="0",layer="0",node="{node_id}"}} 4.0' in text
    assert f'moorage_inference_expert_load_entropy{{layer="0",node="{node_id}"}} 0.92' in text


def test_status_follows_the_gateways_breaker_at_once(operator: Caller) -> None:
    """The breaker opens on the gateway's own failed requests, at once; heartbeats can lag
    an engine's death by an interval. A healthy heartbeat does not hide an open breaker."""
    node_id, token = _node(operator)
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    breaker = operator.client.app.state.services.inference.router.breaker(node_id)
    for _ in range(breaker.failure_threshold):  # as the gateway records failed requests
        breaker.record_failure()

    def status() -> tuple[str, str | None, str]:
        node = operator.get(f"/v1/nodes/{node_id}").json()
        [listed] = [n for n in operator.get("/v1/nodes").json()["items"] if n["id"] == node_id]
        assert (listed["status"], listed["status_reason"]) == (node["status"], node["status_reason"])
        return node["status"], node["status_reason"], node["breaker"]

    state, reason, breaker_state = status()
    assert (state, breaker_state) == ("unhealthy", "open") and "circuit breaker" in reason and "open" in reason
    assert f'moorage_inference_node_healthy{{node="{node_id}"}} 0.0' in operator.get("/metrics").text
    beat = _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "healthy"})
    assert beat.json()["status"] == "unhealthy"  # the node's own word does not close the gateway's breaker
    assert status()[0] == "unhealthy"

    time.sleep(1.1)  # inference_breaker_reset_s: the next request is a trial
    state, reason, breaker_state = status()
    assert (state, breaker_state) == ("unhealthy", "half_open") and "trial" in reason

    breaker.record_success()  # the trial request succeeded
    assert status() == ("healthy", None, "closed")
    assert f'moorage_inference_node_healthy{{node="{node_id}"}} 1.0' in operator.get("/metrics").text


def test_a_closed_breaker_does_not_hide_what_heartbeats_say(operator: Caller) -> None:
    node_id, token = _node(operator)
    _as_node(operator.client, token, "/v1/nodes/register", REPORT)
    breaker = operator.client.app.state.services.inference.router.breaker(node_id)
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    beat = {"state": "restarting", "last_error": "engine exited with -9"}
    _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", beat)
    node = operator.get(f"/v1/nodes/{node_id}").json()
    assert node["status"] == "restarting" and "engine exited with -9" in node["status_reason"]  # the engine's own account
    breaker.record_success()
    assert operator.get(f"/v1/nodes/{node_id}").json()["status"] == "restarting"  # closed, but not healthy yet
    _as_node(operator.client, token, f"/v1/nodes/{node_id}/heartbeat", {"state": "healthy"})
    assert operator.get(f"/v1/nodes/{node_id}").json()["status"] == "healthy"


def test_node_statuses_in_the_openapi_document(operator: Caller) -> None:
    schemas = operator.get("/openapi.json").json()["components"]["schemas"]
    expected = ENGINE_STATES | {"unhealthy", "unregistered", "stale"}
    assert set(get_args(NodeStatus)) == expected
    for shape in ("NodeOut", "NodeAck"):
        assert set(schemas[shape]["properties"]["status"]["enum"]) == expected, shape
    assert "breaker" in schemas["NodeOut"]["properties"]["status"]["description"]
    assert "status_reason" in schemas["NodeOut"]["required"]
