"""End to end on CPU, all real: `moorage node run --engine transformers` (a subprocess that
supervises `transformers serve` on the session's tiny MoE) registers with a real control
plane on a socket; tenants call the OpenAI-compatible gateway with httpx and with the
official openai client; quotas, exact usage, and an engine SIGKILLed mid-stream (error
event, breaker open, a second node takes over, the supervisor restarts the engine).

The second node in the kill test runs the stand-in OpenAI engine (a stand-in, not an
inference engine; see stand_in_openai_engine.py) under a real EngineSupervisor and
HttpHeartbeatSink, so the takeover is visible in its answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inference.engine.policy import SupervisorPolicy
from inference.engine.supervisor import EngineSupervisor
from inference.heartbeat_http import HttpHeartbeatSink
from tests.inference.gateway_helpers import (
    Platform,
    control_plane,
    sse_events,
    stand_in_openai_command,
)
from tests.inference.helpers import free_port

pytestmark = pytest.mark.slow
MODEL = "tiny-moe"
QUESTION = [{"role": "user", "content": "What is a deployment?"}]


@dataclass
class RealNode:
    platform: Platform
    node_id: str
    process: subprocess.Popen[bytes]
    tenant_id: str
    key: str

    def node(self) -> dict[str, Any]:
        # A slow restart under load can outlast the operator key's rate budget: wait it out.
        while (response := self.platform.call("GET", f"/v1/nodes/{self.node_id}")).status_code == 429:
            time.sleep(float(response.headers.get("retry-after", "1")))
        return response.json()  # type: ignore[no-any-return]

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            node = self.node()
            if predicate(node):
                return node
            assert self.process.poll() is None, f"node agent exited while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {node['status']} {node['report']}"
            time.sleep(0.25)

    def usage_by_request(self) -> dict[str, dict[str, Any]]:
        rows = self.platform.call("GET", "/v1/usage?detail=true&limit=200", self.key).json()["rows"]
        return {row["request_id"]: row for row in rows}


@pytest.fixture(scope="module")
def real_node(tiny_moe: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    model_dir, _ = tiny_moe
    tmp = tmp_path_factory.mktemp("gateway-e2e")
    overrides = {"inference_breaker_failures": 1, "inference_breaker_reset_s": 300, "inference_node_stale_s": 15}
    with control_plane(tmp, **overrides) as platform:
        node_id, token = platform.enroll("cpu-node")
        log = (tmp / "node.log").open("wb")
        argv = [
            sys.executable, "-m", "control.cli.main", "node", "run", "--engine", "transformers",
            "--model", str(model_dir), "--port", str(free_port()), "--control-url", platform.url,
            "--public-model-name", MODEL, "--heartbeat-interval", "1",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOORAGE_NODE_TOKEN": token})
        tenant_id, key = platform.tenant("acme", ["inference"])
        node = RealNode(platform, node_id, process, tenant_id, key)
        try:
            node.wait(lambda n: n["status"] == "healthy", 300, "the engine to become healthy")
            yield node
        finally:
            process.send_signal(signal.SIGTERM)  # the node drains and stops its engine
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def _stream(node: RealNode, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    url = node.platform.url + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {node.key}"}
    with node.platform.http.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=180) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        return response.headers["x-request-id"], [json.loads(e) for e in events if e != "[DONE]"] + (
            [{"done": True}] if events and events[-1] == "[DONE]" else []
        )


def test_registered_node_serves_plain_and_streamed_chat_with_exact_usage(real_node: RealNode) -> None:
    node = real_node.node()
    assert node["models"][0]["name"] == MODEL and node["report"]["model_info"]["experts"] == 16
    models = real_node.platform.call("GET", "/v1/models", real_node.key).json()
    assert [m["id"] for m in models["data"]] == [MODEL]

    seen: dict[str, dict[str, int]] = {}
    plain = real_node.platform.chat(real_node.key, model=MODEL, messages=QUESTION, max_tokens=16)
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == MODEL and plain.json()["choices"][0]["message"]["content"] is not None
    seen[plain.headers["x-request-id"]] = plain.json()["usage"]

    request_id, chunks = _stream(
        real_node, {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "stream_options": {"include_usage": True}}
    )
    assert chunks[-1] == {"done": True}  # the gateway ends the stream properly; the engine does not
    usage = [c["usage"] for c in chunks[:-1] if c.get("usage")]
    assert len(usage) == 1 and all(c["model"] == MODEL for c in chunks[:-1])
    seen[request_id] = usage[0]

    hidden_id, hidden = _stream(real_node, {"model": MODEL, "messages": QUESTION, "max_tokens": 16})
    assert not any(c.get("usage") for c in hidden)  # the engine always sends it; the client did not ask

    rows = real_node.usage_by_request()
    for request_id, reported in seen.items():  # exactly what the engine reported, request by request
        row = rows[request_id]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (reported["prompt_tokens"], reported["completion_tokens"])
        assert row["usage_reported"] is True and row["node_id"] == real_node.node_id
    assert rows[hidden_id]["usage_reported"] is True and rows[hidden_id]["ttft_ms"] is not None


def test_official_openai_client_works_unchanged(real_node: RealNode) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=real_node.platform.url + "/v1", api_key=real_node.key, timeout=180, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12)
    assert completion.model == MODEL and completion.usage and completion.usage.total_tokens > 0
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    with_usage = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    totals = real_node.platform.call("GET", "/v1/usage", real_node.key).json()["totals"]
    assert totals["requests"] >= 6 and totals["errors"] == 0


def test_quota_exhaustion_is_a_clear_429(real_node: RealNode) -> None:
    platform = real_node.platform
    spent = platform.call("GET", "/v1/usage", real_node.key).json()["totals"]["total_tokens"]
    path = f"/v1/tenants/{real_node.tenant_id}/inference-limits"
    assert platform.call("PUT", path, json={"token_budget": spent + 20}).status_code == 200
    try:
        refused = platform.chat(real_node.key, model=MODEL, messages=QUESTION, max_tokens=64)
        assert refused.status_code == 429 and refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["code"] == "inference-quota-exceeded" and "max_tokens" in problem["detail"]
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        platform.call("PUT", path, json={})


def test_engine_killed_mid_stream(real_node: RealNode, tmp_path: Path) -> None:
    platform = real_node.platform
    engine_pid = real_node.node()["report"]["pid"]
    # A long generation: no EOS in this generation config, so it runs to max_tokens.
    body = {
        "model": MODEL, "messages": QUESTION, "max_tokens": 3000, "stream": True,
        "generation_config": json.dumps({"max_new_tokens": 3000, "do_sample": False}),
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {real_node.key}"}
    spare_id, spare_token = platform.enroll("spare")
    spare = EngineSupervisor(
        stand_in_openai_command("--name", "spare"),
        SupervisorPolicy(health_timeout_s=30, health_interval_s=0.05, heartbeat_interval_s=0.5, drain_grace_s=2),
        heartbeat=HttpHeartbeatSink(platform.url, spare_token, public_model=MODEL),
        gpu_probe=lambda: None,
    )
    events: list[str] = []
    try:
        with platform.http.stream(
            "POST", platform.url + "/v1/chat/completions", json=body, headers=headers, timeout=180
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while len([e for e in events if '"content"' in e]) < 3:  # tokens are flowing from the real engine
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
            spare.start()  # a second node joins while the first is busy streaming
            assert spare.wait_healthy(30)
            os.kill(engine_pid, signal.SIGKILL)
            events += [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        error = json.loads(events[-1])["error"]
        assert error["code"] == "inference-stream-interrupted" and "[DONE]" not in events
        assert real_node.node()["breaker"] == "open"

        deadline = time.monotonic() + 20
        while platform.call("GET", f"/v1/nodes/{spare_id}").json()["status"] != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        takeover = platform.chat(real_node.key, model=MODEL, messages=QUESTION, max_tokens=4)
        assert takeover.status_code == 200, takeover.text
        assert "[spare]" in takeover.json()["choices"][0]["message"]["content"]

        restarted = real_node.wait(
            lambda n: n["report"].get("restarts", 0) >= 1 and n["state"] == "healthy", 300, "the engine's restart"
        )
        assert restarted["report"]["pid"] != engine_pid and restarted["report"]["last_exit_code"] == -9
        rows = real_node.usage_by_request()
        broken = [r for r in rows.values() if r["status"] == "error"]
        assert len(broken) == 1 and broken[0]["node_id"] == real_node.node_id and broken[0]["completion_tokens"] >= 3
    finally:
        spare.drain()
