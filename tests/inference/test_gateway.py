"""The gateway against a real control plane on a socket and stand-in OpenAI engines (real
child processes; see stand_in_openai_engine.py: stand-ins, not inference engines): model
mapping, streaming relay, failover, breakers, quotas, usage and its isolation, drain."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inference.gateway_helpers import (
    Platform,
    asgi_2_4_send,
    control_plane,
    sse_events,
    stand_in_engine,
)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with control_plane(tmp_path, inference_breaker_failures=1, inference_breaker_reset_s=60) as running:
        yield running


def _stream(platform: Platform, token: str, **body: object) -> tuple[int, list[str]]:
    payload = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, **body}
    with platform.http.stream(
        "POST", platform.url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status_code, sse_events(response) if response.status_code == 200 else [response.read().decode()]


def _usage_rows(platform: Platform, token: str) -> list[dict]:
    return platform.call("GET", "/v1/usage?detail=true", token).json()["rows"]


def test_models_and_a_plain_completion_mapped_to_the_engine_name(platform: Platform) -> None:
    with stand_in_engine("--expect-model", "/srv/models/tiny") as engine:
        platform.node(engine.base_url, model="tiny", engine_model="/srv/models/tiny")
        _, token = platform.tenant("acme")
        assert platform.call("GET", "/v1/models", token).json()["data"][0]["id"] == "tiny"
        response = platform.chat(token, max_tokens=5)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "tiny"  # the engine's own name (a path) never reaches the tenant
        assert body["choices"][0]["message"]["content"].startswith("w0 w1 w2 w3 w4")
        assert engine.last_request()["model"] == "/srv/models/tiny"
        unbounded = platform.chat(token)
        assert unbounded.status_code == 200 and engine.last_request()["max_tokens"] == 1024  # the default, set
        text = platform.call("POST", "/v1/completions", token, json={"model": "tiny", "prompt": "Once", "max_tokens": 3})
        assert text.status_code == 200 and text.json()["choices"][0]["text"].startswith("w0 w1 w2")
        [row, *_] = _usage_rows(platform, token)
        assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (
            body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], "ok",
        )  # fmt: skip


@pytest.mark.parametrize("openai_style", [False, True])
@pytest.mark.parametrize("include_usage", [False, True])
def test_streams_are_relayed_with_usage_only_when_asked(platform: Platform, openai_style: bool, include_usage: bool) -> None:
    flags = ("--openai-style",) if openai_style else ()
    with stand_in_engine(*flags) as engine:
        platform.node(engine.base_url)
        _, token = platform.tenant("acme")
        status, events = _stream(platform, token, max_tokens=4, stream_options={"include_usage": include_usage})
        assert status == 200
        assert engine.last_request()["stream_options"] == {"include_usage": True}  # the gateway always asks
        assert events[-1] == "[DONE]"  # added even though transformers-style engines omit it
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "w0 w1 w2 w3 "
        assert all(c["model"] == "tiny" for c in chunks)
        usage = [c["usage"] for c in chunks if c.get("usage")]
        prompt = len(json.dumps([{"role": "user", "content": "hi"}]).split())  # how the stand-in counts
        assert usage == ([{"prompt_tokens": prompt, "completion_tokens": 4, "total_tokens": prompt + 4}] if include_usage else [])
        row = _usage_rows(platform, token)[0]
        assert (row["prompt_tokens"], row["completion_tokens"], row["usage_reported"]) == (prompt, 4, True)
        assert row["stream"] is True and row["ttft_ms"] is not None


def test_failover_on_5xx_and_refused_connections_before_any_byte(platform: Platform) -> None:
    with stand_in_engine("--fail-status", "500") as broken, stand_in_engine("--name", "good") as good:
        broken_id = platform.node(broken.base_url, name="broken")
        refused_id = platform.node("http://127.0.0.1:9", name="refused")  # nothing listens on port 9
        good_id = platform.node(good.base_url, name="good")
        _, token = platform.tenant("acme")
        for _ in range(40):  # whatever order they are tried in, the good node answers
            response = platform.chat(token, max_tokens=2)
            assert response.status_code == 200 and "[good]" in response.json()["choices"][0]["message"]["content"]
            nodes = {n["id"]: n for n in platform.call("GET", "/v1/nodes").json()["items"]}
            if any(nodes[n]["breaker"] == "open" for n in (broken_id, refused_id)):
                break  # ties are broken at random: a broken node came first once, and failed over

        assert nodes[good_id]["breaker"] == "closed"
        tried = [nodes[n]["breaker"] for n in (broken_id, refused_id)]
        assert "open" in tried  # threshold 1: each failure opened its node's breaker; open ones are skipped
        status, events = _stream(platform, token, max_tokens=2)
        assert status == 200 and events[-1] == "[DONE]"
        assert {r["node_id"] for r in _usage_rows(platform, token)} == {good_id}


def test_a_stream_that_breaks_midway_ends_with_an_error_event(platform: Platform) -> None:
    with stand_in_engine("--die-after-chunks", "3", "--words", "10") as dying, stand_in_engine("--name", "b") as spare:
        dying_id = platform.node(dying.base_url, name="dying")
        _, token = platform.tenant("acme")
        status, events = _stream(platform, token, max_tokens=10)
        assert status == 200
        assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:3]] == ["w0 ", "w1 ", "w2 "]
        error = json.loads(events[-1])["error"]
        assert error["code"] == "inference-stream-interrupted" and error["request_id"].startswith("req_")
        assert "[DONE]" not in events
        assert platform.call("GET", f"/v1/nodes/{dying_id}").json()["breaker"] == "open"
        row = _usage_rows(platform, token)[0]
        assert row["status"] == "error" and row["usage_reported"] is False and row["completion_tokens"] == 3
        platform.node(spare.base_url, name="spare")
        assert platform.chat(token, max_tokens=2).status_code == 200  # the next request goes elsewhere


def test_a_client_gone_before_the_first_token_frees_its_node_and_reservation(tmp_path: Path) -> None:
    """The client hangs up while the engine is still on its first token, and the server
    (as ASGI 2.4 asks) raises on the response's first send: the stream is never iterated.
    The node's in-flight count, the token reservation and the upstream connection must be
    released all the same."""
    with (
        control_plane(tmp_path, asgi_2_4_send, inference_tokens_per_minute=100) as platform,
        stand_in_engine("--first-token-delay", "1") as engine,
    ):
        node_id = platform.node(engine.base_url)
        _, token = platform.tenant("acme")
        payload = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 80})
        host, port = platform.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}".encode()
            )
            deadline = time.monotonic() + 10
            while not platform.app.state.services.inference.router.in_flight(node_id):  # admitted, waiting upstream
                assert time.monotonic() < deadline, "the request never reached the node"
                time.sleep(0.02)
        deadline = time.monotonic() + 15
        while not (rows := _usage_rows(platform, token)):
            assert time.monotonic() < deadline, "the abandoned stream was never settled (no usage row)"
            time.sleep(0.1)
        assert (rows[0]["status"], rows[0]["http_status"], rows[0]["node_id"]) == ("cancelled", 499, node_id)
        assert platform.app.state.services.inference.router.in_flight(node_id) == 0
        assert platform.call("GET", f"/v1/nodes/{node_id}").json()["breaker"] == "closed"  # no verdict on the node
        assert platform.chat(token, max_tokens=40).status_code == 200  # its 80-token reservation was given back


def test_no_healthy_node_is_503_and_an_unknown_model_404(platform: Platform) -> None:
    _, token = platform.tenant("acme")
    missing = platform.chat(token, model="nope")
    assert missing.status_code == 404 and missing.json()["code"] == "inference-model-not-found"
    with stand_in_engine() as engine:
        node_id = platform.node(engine.base_url)
        platform.call("POST", f"/v1/nodes/{node_id}/drain")  # drained: unroutable
        drained = platform.chat(token)
        assert drained.status_code == 503 and drained.json()["code"] == "inference-unavailable"
        assert int(drained.headers["Retry-After"]) >= 1
        assert platform.call("GET", "/v1/models", token).json()["data"] == []
        platform.call("POST", f"/v1/nodes/{node_id}/resume")
        assert platform.chat(token).status_code == 200
    dead = platform.chat(token)  # registered and healthy, but the engine is gone
    assert dead.status_code == 503 and dead.json()["code"] == "inference-unavailable"


def test_scopes(platform: Platform) -> None:
    with stand_in_engine() as engine:
        platform.node(engine.base_url)
        _, deploy_only = platform.tenant("deployers", ["deploy"])
        refused = platform.chat(deploy_only)
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient-scope"
        assert platform.call("GET", "/v1/models", deploy_only).status_code == 403
        assert platform.chat(platform.operator_token).json()["code"] == "tenant-key-required"
        assert platform.chat("mrg_live_nonsense").status_code == 401


def test_quotas_429_with_clear_codes(platform: Platform) -> None:
    with stand_in_engine() as engine:
        platform.node(engine.base_url)
        tenant_id, token = platform.tenant("acme")
        limits = {"requests_per_minute": 2, "token_budget": 100}
        assert platform.call("PUT", f"/v1/tenants/{tenant_id}/inference-limits", json=limits).status_code == 200
        too_big = platform.chat(token, max_tokens=200)  # reserves prompt + 200 > the 100-token budget
        assert too_big.status_code == 429 and too_big.json()["code"] == "inference-quota-exceeded"
        assert int(too_big.headers["Retry-After"]) > 60  # until the month ends
        assert platform.chat(token, max_tokens=8).status_code == 200
        assert platform.chat(token, max_tokens=8).status_code == 200
        limited = platform.chat(token, max_tokens=8)
        assert limited.status_code == 429 and limited.json()["code"] == "inference-rate-limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        platform.call("PUT", f"/v1/tenants/{tenant_id}/inference-limits", json={"token_budget": 40})
        # 2 requests settled at 13 tokens each (engine usage, not the reservations): 14 left of 40.
        spent = platform.call("GET", "/v1/usage", token).json()["totals"]["total_tokens"]
        assert spent == 26
        over = platform.chat(token, max_tokens=12)  # 5 prompt estimate (hello there: 4 + 8 template) ...
        assert over.status_code == 429 and over.json()["code"] == "inference-quota-exceeded"
        read = platform.call("GET", f"/v1/tenants/{tenant_id}/inference-limits").json()
        assert read["token_budget"] == 40 and read["requests_per_minute"] > 2  # PUT replaced every override


def test_tokens_per_minute_counts_open_reservations(tmp_path: Path) -> None:
    with control_plane(tmp_path, inference_tokens_per_minute=100) as platform, stand_in_engine("--delay", "0.3") as engine:
        platform.node(engine.base_url)
        _, token = platform.tenant("acme")
        opened = threading.Event()
        results: list[int] = []

        def slow_stream() -> None:
            payload = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 80}
            with platform.http.stream("POST", platform.url + "/v1/chat/completions", json=payload,
                                      headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
                opened.set()
                results.append(len(sse_events(response)))

        thread = threading.Thread(target=slow_stream)
        thread.start()
        assert opened.wait(30)
        refused = platform.chat(token, max_tokens=40)  # 80 (+ prompt) reserved by the open stream
        assert refused.status_code == 429 and refused.json()["code"] == "inference-rate-limited"
        thread.join(30)
        assert results and results[0] > 1


def test_usage_is_isolated_between_tenants(platform: Platform) -> None:
    with stand_in_engine() as engine:
        platform.node(engine.base_url)
        alpha_id, alpha = platform.tenant("alpha")
        beta_id, beta = platform.tenant("beta")
        for _ in range(2):
            assert platform.chat(alpha, max_tokens=3).status_code == 200
        assert platform.chat(beta, max_tokens=5).status_code == 200
        mine = platform.call("GET", "/v1/usage?detail=true", beta).json()
        assert mine["totals"]["requests"] == 1 and {r["tenant_id"] for r in mine["rows"]} == {beta_id}
        assert platform.call("GET", "/v1/usage", alpha).json()["totals"]["requests"] == 2
        everyone = platform.call("GET", "/v1/operator/usage").json()
        assert {b["tenant_id"] for b in everyone["items"]} == {alpha_id, beta_id} and everyone["totals"]["requests"] == 3
        only_alpha = platform.call("GET", f"/v1/operator/usage?tenant_id={alpha_id}&detail=true").json()
        assert {r["tenant_id"] for r in only_alpha["rows"]} == {alpha_id}
        assert platform.call("GET", "/v1/operator/usage", beta).status_code == 403


def test_least_in_flight_spreads_concurrent_streams(platform: Platform) -> None:
    with stand_in_engine("--delay", "0.2", "--name", "a") as a, stand_in_engine("--delay", "0.2", "--name", "b") as b:
        ids = {platform.node(a.base_url, name="a"), platform.node(b.base_url, name="b")}
        _, token = platform.tenant("acme")
        threads = [threading.Thread(target=_stream, args=(platform, token), kwargs={"max_tokens": 6}) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert {r["node_id"] for r in _usage_rows(platform, token)} == ids


def test_gateway_metrics(platform: Platform) -> None:
    with stand_in_engine() as engine:
        node_id = platform.node(engine.base_url)
        tenant_id, token = platform.tenant("acme")
        _stream(platform, token, max_tokens=4)
        text = platform.call("GET", "/metrics").text
        assert f'moorage_inference_node_tokens_total{{kind="completion",model="tiny",node="{node_id}"}} 4.0' in text
        assert f'moorage_inference_tenant_tokens_total{{kind="completion",model="tiny",tenant="{tenant_id}"}} 4.0' in text
        assert f'moorage_inference_node_ttft_seconds_count{{model="tiny",node="{node_id}"}} 1.0' in text
        assert (
            f'moorage_inference_tenant_request_duration_seconds_count{{model="tiny",status="ok",tenant="{tenant_id}"}} 1.0'
            in text
        )
        assert f'moorage_inference_node_requests_in_flight{{node="{node_id}",source="gateway"}} 0.0' in text
