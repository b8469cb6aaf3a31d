"""Stream failover when an engine process is SIGKILLed, against a real control plane on a
socket and stand-in OpenAI engines (real child processes; see stand_in_openai_engine.py:
stand-ins, not inference engines). Each dying engine hangs at a chosen point of its
stream (after the role event, or after its first token), says so with a file, and the
test kills it there: the moment of death is exact, not a race."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from control.api.gateway_proxy import commits
from tests.inference.gateway_helpers import Platform, StandIn, control_plane, sse_events, stand_in_engine

HANG_AFTER_ROLE = ("--role-event", "--hang-after-chunks", "0")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with control_plane(tmp_path, inference_breaker_failures=1, inference_breaker_reset_s=60) as running:
        yield running


def _payload(**body: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, **body}


def _stream(platform: Platform, token: str, **body: Any) -> tuple[int, httpx.Headers, list[str]]:
    """(status, headers, the `data` of each event, or the body when it is no stream)."""
    with platform.http.stream(
        "POST", platform.url + "/v1/chat/completions", json=_payload(**body), headers={"Authorization": f"Bearer {token}"}
    ) as response:
        events = sse_events(response) if response.status_code == 200 else [response.read().decode()]
        return response.status_code, response.headers, events


def _usage_rows(platform: Platform, token: str) -> list[dict[str, Any]]:
    return platform.call("GET", "/v1/usage?detail=true", token).json()["rows"]  # type: ignore[no-any-return]


def _node(platform: Platform, node_id: str) -> dict[str, Any]:
    return platform.call("GET", f"/v1/nodes/{node_id}").json()  # type: ignore[no-any-return]


def _kill_when_ready(engine: StandIn, ready: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert time.monotonic() < deadline, "the engine never reached the point where the test kills it"
        time.sleep(0.01)
    engine.process.send_signal(signal.SIGKILL)
    engine.process.wait(timeout=10)


@contextmanager
def killed_when_ready(*engines: tuple[StandIn, Path]) -> Iterator[None]:
    """Each engine is SIGKILLed as soon as it creates its ready file, while the body runs."""
    threads = [threading.Thread(target=_kill_when_ready, args=pair, daemon=True) for pair in engines]
    for thread in threads:
        thread.start()
    yield
    for thread in threads:
        thread.join(40)


@contextmanager
def tried_first(platform: Platform, busy_node_id: str) -> Iterator[None]:
    """The other node is tried first: the router prefers the node with fewer requests in
    flight, so ``busy_node_id`` is made to look busy with one."""
    router = platform.app.state.services.inference.router
    router.begin(busy_node_id)
    try:
        yield
    finally:
        router.end(busy_node_id)


def _chunks(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events if e != "[DONE]"]


def _roles(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["role"] for c in chunks if c.get("choices") and "role" in c["choices"][0].get("delta", {})]


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_a_node_killed_before_its_first_token_is_replaced_without_the_client_seeing_it(
    platform: Platform, tmp_path: Path
) -> None:
    ready = tmp_path / "dying-sent-its-role-event"
    with (
        stand_in_engine(*HANG_AFTER_ROLE, "--ready-file", str(ready), "--name", "dying") as dying,
        stand_in_engine("--role-event", "--name", "good") as good,
    ):
        dying_id, good_id = platform.node(dying.base_url, name="dying"), platform.node(good.base_url, name="good")
        _, token = platform.tenant("acme")
        with tried_first(platform, good_id), killed_when_ready((dying, ready)):
            status, _, events = _stream(platform, token, max_tokens=4, stream_options={"include_usage": True})
        assert ready.exists() and dying.process.returncode == -signal.SIGKILL  # the dying node had the request first

        assert status == 200 and events[-1] == "[DONE]"
        chunks = _chunks(events)
        assert _roles(chunks) == ["assistant"]  # the dead node's role event was held back, never sent
        assert _content(chunks) == "w0 w1 w2 w3 " and not any("error" in c for c in chunks)
        [usage] = [c["usage"] for c in chunks if c.get("usage")]

        [row] = _usage_rows(platform, token)  # one row, for the node that served it: the failed attempt bills nothing
        assert (row["node_id"], row["status"], row["http_status"], row["usage_reported"]) == (good_id, "ok", 200, True)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert usage["completion_tokens"] == 4  # the served node's count, nothing added for the dead one
        dead = _node(platform, dying_id)
        assert dead["breaker"] == "open"  # its failure was recorded (threshold 1) ...
        assert dead["status"] == "unhealthy" and "circuit breaker" in dead["status_reason"]  # ... and shown, no heartbeat needed
        assert (_node(platform, good_id)["breaker"], _node(platform, good_id)["status"]) == ("closed", "healthy")
        assert platform.app.state.services.inference.router.in_flight(dying_id) == 0


def test_a_node_killed_after_its_first_token_interrupts_the_stream(platform: Platform, tmp_path: Path) -> None:
    ready = tmp_path / "dying-sent-a-token"
    with (
        stand_in_engine("--role-event", "--hang-after-chunks", "1", "--ready-file", str(ready), "--name", "dying") as dying,
        stand_in_engine("--role-event", "--name", "spare") as spare,
    ):
        dying_id, spare_id = platform.node(dying.base_url, name="dying"), platform.node(spare.base_url, name="spare")
        _, token = platform.tenant("acme")
        events: list[str] = []
        with (
            tried_first(platform, spare_id),
            platform.http.stream(
                "POST", platform.url + "/v1/chat/completions", json=_payload(max_tokens=4),
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):  # fmt: skip
            assert response.status_code == 200
            lines = response.iter_lines()
            while not any('"content":"w0 "' in e for e in events):  # the first token reached the client
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
            _kill_when_ready(dying, ready)
            events += [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]

        assert "[DONE]" not in events
        chunks = _chunks(events)
        assert _roles(chunks[:-1]) == ["assistant"] and _content(chunks[:-1]) == "w0 "
        error = chunks[-1]["error"]
        assert error["code"] == "inference-stream-interrupted" and error["request_id"].startswith("req_")
        assert spare.last_request() == {}  # no failover once a token was sent
        [row] = _usage_rows(platform, token)
        assert (row["node_id"], row["status"], row["http_status"]) == (dying_id, "error", 502)
        assert row["usage_reported"] is False and row["completion_tokens"] == 1
        assert _node(platform, dying_id)["breaker"] == "open"


def test_every_node_killed_before_a_token_is_a_503_the_client_can_retry(platform: Platform, tmp_path: Path) -> None:
    ready_a, ready_b = tmp_path / "a-ready", tmp_path / "b-ready"
    with (
        stand_in_engine(*HANG_AFTER_ROLE, "--ready-file", str(ready_a), "--name", "a") as a,
        stand_in_engine(*HANG_AFTER_ROLE, "--ready-file", str(ready_b), "--name", "b") as b,
    ):
        ids = [platform.node(a.base_url, name="a"), platform.node(b.base_url, name="b")]
        _, token = platform.tenant("acme")
        with killed_when_ready((a, ready_a), (b, ready_b)):  # whichever is tried first dies first
            status, headers, [body] = _stream(platform, token, max_tokens=4)
        assert ready_a.exists() and ready_b.exists()  # both were tried

        assert status == 503 and headers["content-type"].startswith("application/problem+json")
        assert int(headers["Retry-After"]) >= 1
        problem = json.loads(body)
        assert problem["code"] == "inference-unavailable" and "nothing was generated" in problem["detail"]
        assert problem["request_id"].startswith("req_")
        assert [(_node(platform, n)["breaker"], _node(platform, n)["status"]) for n in ids] == [("open", "unhealthy")] * 2
        [row] = _usage_rows(platform, token)
        assert (row["status"], row["http_status"], row["prompt_tokens"], row["completion_tokens"]) == ("error", 503, 0, 0)
        retry = platform.chat(token, max_tokens=2)  # both breakers open now: refused at once, with when to retry
        assert retry.status_code == 503 and int(retry.headers["Retry-After"]) >= 1


def test_a_node_is_unhealthy_from_its_engines_death_until_a_trial_request_succeeds(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with (
        control_plane(tmp_path, inference_breaker_failures=1, inference_breaker_reset_s=1) as platform,
        stand_in_engine(*HANG_AFTER_ROLE, "--ready-file", str(ready)) as dying,
    ):
        node_id, node_token = platform.enroll("gpu-1")
        assert platform.register(node_token, dying.base_url).status_code == 200
        _, token = platform.tenant("acme")
        with killed_when_ready((dying, ready)):
            assert _stream(platform, token, max_tokens=2)[0] == 503
        assert _node(platform, node_id)["status"] == "unhealthy"  # its last heartbeat still says healthy

        with stand_in_engine("--role-event") as restarted:  # the node agent restarts its engine and says so
            assert platform.register(node_token, restarted.base_url).status_code == 200
            node = _node(platform, node_id)
            assert (node["status"], node["breaker"], node["state"]) == ("unhealthy", "open", "healthy")
            time.sleep(1.1)  # inference_breaker_reset_s
            node = _node(platform, node_id)
            assert (node["status"], node["breaker"]) == ("unhealthy", "half_open") and "trial" in node["status_reason"]
            status, _, events = _stream(platform, token, max_tokens=2)  # the trial request
            assert status == 200 and events[-1] == "[DONE]"
            node = _node(platform, node_id)
            assert (node["status"], node["status_reason"], node["breaker"]) == ("healthy", None, "closed")


@pytest.mark.parametrize(
    ("event", "commits_the_stream"),
    [
        ({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}, False),
        ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, False),
        ({"choices": [{"index": 0, "delta": {}}]}, False),
        ({"choices": []}, False),
        ({"choices": [{"index": 0, "delta": {"content": "w0"}}]}, True),
        ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]}, True),
        ({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}, True),
        ({"choices": [{"index": 0, "text": "Once"}]}, True),
        ({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}, True),
        ({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}, True),
        ({"error": {"message": "engine error"}}, True),
    ],
)
def test_what_commits_a_stream_to_its_node(event: dict[str, Any], commits_the_stream: bool) -> None:
    """Until an event brings output (or ends the stream), another node can still answer."""
    assert commits(msgspec.json.encode(event)) is commits_the_stream


def test_done_commits_and_garbage_is_a_failing_node() -> None:
    assert commits(b"[DONE]") is True
    for garbage in (b"not json", b"[1, 2]"):
        with pytest.raises(msgspec.DecodeError):
            commits(garbage)
