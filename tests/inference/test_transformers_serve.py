"""Real end to end on CPU: `transformers serve` on the tiny MoE, run by the supervisor on a
free loopback port; chat completions plain and streamed (httpx and the official openai
client); then a SIGTERM drain stops it cleanly.

Recorded engine behaviour (transformers 5.x `serve`), which the gateway must absorb:
- a stream's last chunk carries `usage` next to `finish_reason` whether or not the request
  set `stream_options.include_usage` (OpenAI/vLLM send it only when asked, in an extra
  chunk with empty `choices`);
- the stream ends WITHOUT `data: [DONE]` (the connection just closes);
- requests must name the pinned directory (or omit `model`); any other name is a 400;
  responses report `model` as "DIR@main"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.engine.commands import transformers_command
from inference.engine.policy import SupervisorPolicy
from inference.engine.status import EngineState
from inference.engine.supervisor import EngineSupervisor
from tests.inference.helpers import free_port

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is a deployment?"}]


@pytest.fixture(scope="module")
def serving(tiny_moe: tuple[Path, dict[str, Any]]) -> Iterator[EngineSupervisor]:
    model_dir, _ = tiny_moe
    command = transformers_command(model_dir, port=free_port())
    policy = SupervisorPolicy(health_timeout_s=180, max_consecutive_crashes=0, drain_grace_s=10)
    supervisor = EngineSupervisor(command, policy, gpu_probe=lambda: None)
    supervisor.start()
    try:
        assert supervisor.wait_healthy(timeout=180), supervisor.status().last_error
        yield supervisor
    finally:
        supervisor.drain()


def _sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_chat_completion(serving: EngineSupervisor) -> None:
    body = {"model": serving.command.served_model_name, "messages": QUESTION, "max_tokens": 24}
    response = httpx.post(serving.command.base_url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    completion = response.json()
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = completion["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_wrong_model_name_is_refused(serving: EngineSupervisor) -> None:
    body = {"model": "some-other-model", "messages": QUESTION, "max_tokens": 4}
    response = httpx.post(serving.command.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_chat_completion(serving: EngineSupervisor, include_usage: bool) -> None:
    body = {
        "model": serving.command.served_model_name,
        "messages": QUESTION,
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    url = serving.command.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert "[DONE]" not in events  # this engine closes the stream without the sentinel
    chunks = [json.loads(event) for event in events]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text.strip()
    finished = [chunk for chunk in chunks if chunk["choices"]][-1]
    assert finished["choices"][0]["finish_reason"] in ("stop", "length")
    with_usage = [chunk for chunk in chunks if chunk.get("usage")]
    # transformers up to 5.24 sent usage in the final chunk whatever include_usage said; from
    # 5.25 it follows OpenAI: a last chunk with no choices, only when asked. The gateway asks,
    # and reads either shape.
    if include_usage or with_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
        assert with_usage[0]["usage"]["completion_tokens"] > 0


def test_official_openai_client(serving: EngineSupervisor) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=serving.command.base_url + "/v1", api_key="unused-by-the-engine", timeout=120)
    model = serving.command.served_model_name
    completion = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16)
    assert completion.choices[0].message.content and completion.usage and completion.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # the client ends cleanly without [DONE]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_drain_stops_the_engine_cleanly(serving: EngineSupervisor) -> None:
    # Runs last in this module: the module fixture's own drain is then a no-op.
    base_url = serving.command.base_url
    assert serving.status().state is EngineState.HEALTHY
    final = serving.drain()
    assert final.state is EngineState.STOPPED and final.pid is None and final.restarts == 0
    # uvicorn finishes gracefully and re-raises SIGTERM: exit by signal 15, not a SIGKILL.
    assert final.last_exit_code in (0, -15)
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/health", timeout=5)
