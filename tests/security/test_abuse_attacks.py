"""Abuse a tenant (or anyone on the network) can commit with nothing but a socket and a
key: streams that are never read, guessing tokens, escape sequences in log output.

Each test replays the attack against a real control plane under uvicorn on loopback
(stand-in OpenAI engines are real child processes; see tests/inference).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from control.cli.client.commands.follow import follow_deployment
from control.cli.client.commands.inference import run_chat
from control.cli.client.config import ClientConfig, resolve
from control.cli.client.http import ApiClient
from control.cli.main import main
from control.jobs.build import BuildLog
from tests.inference.gateway_helpers import Platform, control_plane, stand_in_engine
from tests.live_server import cli_tenant

STREAM_IDLE_S = 2
MANY_TOKENS = 100_000  # ~15 MB of events: far more than every socket buffer on the way holds


def _open_stream(platform: Platform, token: str, max_tokens: int, receive_buffer: int = 4096) -> socket.socket:
    """A streaming chat completion sent on a raw socket with a small receive buffer; the
    caller decides whether (and how fast) to read it."""
    host, port = platform.url.removeprefix("http://").split(":")
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: it sets the window
    raw.settimeout(30)
    raw.connect((host, int(port)))
    payload = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": max_tokens}
    )
    raw.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}".encode()
    )
    return raw


def _wait_for(condition, timeout_s: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _usage_rows(platform: Platform, token: str) -> list[dict]:
    return platform.call("GET", "/v1/usage?detail=true", token).json()["rows"]


def _open_engine_streams(engine_url: str) -> int:
    return httpx.get(engine_url + "/streams", timeout=5).json()["open"]  # type: ignore[no-any-return]


@contextmanager
def _gateway(tmp_path: Path, *flags: str) -> Iterator[tuple[Platform, str, str, str, str]]:
    """(platform, node id, tenant id, tenant key, engine url): one stand-in engine behind the gateway."""
    with ExitStack() as stack:
        platform = stack.enter_context(
            control_plane(tmp_path, gateway_stream_idle_s=STREAM_IDLE_S, inference_tokens_per_minute=10 * MANY_TOKENS)
        )
        engine = stack.enter_context(stand_in_engine(*flags))
        node_id = platform.node(engine.base_url)
        tenant_id, token = platform.tenant("acme")
        yield platform, node_id, tenant_id, token, engine.base_url


def test_unread_streams_are_cut_off_and_free_their_node_engine_and_reservation(tmp_path: Path) -> None:
    """Three clients open a stream and never read a byte. Once a send to one of them has
    waited STREAM_IDLE_S, the gateway cuts it off: the node's in-flight count is back to
    0, the engine stops generating (its stream is closed), the reservations are given
    back and each stream has its usage row, status ``stalled``."""
    with _gateway(tmp_path, "--words", str(MANY_TOKENS)) as (platform, node_id, tenant_id, token, engine_url):
        router = platform.app.state.services.inference.router
        quota = platform.app.state.services.inference.quota
        clients = [_open_stream(platform, token, MANY_TOKENS) for _ in range(3)]
        try:
            _wait_for(lambda: router.in_flight(node_id) == 3, 15, "the three streams never reached the node")
            started = time.monotonic()
            _wait_for(
                lambda: router.in_flight(node_id) == 0, 40,
                f"unread streams still hold the node: in flight {router.in_flight(node_id)}",
            )  # fmt: skip
            held_s = time.monotonic() - started
            _wait_for(lambda: _open_engine_streams(engine_url) == 0, 10, "the engine is still generating for unread streams")
            rows = _usage_rows(platform, token)
            assert len(rows) == 3 and {(r["status"], r["http_status"]) for r in rows} == {("stalled", 408)}
            assert all(r["reserved_tokens"] > MANY_TOKENS for r in rows)
            assert quota._state(tenant_id).outstanding == 0  # every reservation settled
            assert held_s < 20, f"cut off only after {held_s:.1f} s"
        finally:
            for client in clients:
                client.close()


def _read_in_bursts(client: socket.socket, pause_s: float, burst: int = 1 << 20, limit_s: float = 60) -> tuple[bytes, int]:
    """Sleep ``pause_s`` (the buffers fill again, the server's send waits), read ``burst``
    bytes, again, until the stream's chunked body ends: (what came, how many pauses)."""
    received = bytearray()
    started, pauses = time.monotonic(), 0
    client.settimeout(0.2)
    while not received.endswith(b"\r\n0\r\n\r\n") and time.monotonic() - started < limit_s:
        time.sleep(pause_s)
        pauses += 1
        burst_end = len(received) + burst
        while len(received) < burst_end:
            try:
                chunk = client.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return bytes(received), pauses
            received += chunk
    return bytes(received), pauses


def _stream_lines(platform: Platform, token: str) -> list[str]:
    """The data lines of a whole streamed chat completion, read as fast as they come."""
    with platform.http.stream(
        "POST", platform.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:  # fmt: skip
        return [line for line in response.iter_lines() if line.startswith("data: ")]


def test_a_slow_reader_and_a_slow_engine_are_not_cut_off(tmp_path: Path) -> None:
    """The limit is on time without progress to the client, not on the stream's length
    nor on the engine's pace: a client that keeps pausing for less than the limit (with
    the server's sends blocked meanwhile) gets the whole stream, and so does one whose
    engine is silent for longer than the limit between two tokens."""
    with (
        _gateway(tmp_path, "--words", "30000") as (platform, _, _, token, _),
        _gateway(tmp_path / "slow-engine", "--words", "2", "--delay", str(STREAM_IDLE_S * 1.5)) as slow_engine,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        # The slow engine's stream (a control plane of its own) mostly waits: it runs meanwhile.
        slow_lines = pool.submit(_stream_lines, slow_engine[0], slow_engine[3])
        with _open_stream(platform, token, 30000) as client:
            received, pauses = _read_in_bursts(client, pause_s=STREAM_IDLE_S * 0.6)
        assert pauses >= 3, f"the stream fit in {pauses} pauses: too short to prove anything"
        assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), f"cut off after {len(received)} bytes"
        _wait_for(lambda: _usage_rows(platform, token), 10, "no usage row")
        assert _usage_rows(platform, token)[0]["status"] == "ok"
        lines = slow_lines.result()
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


AUTH_QUOTA = 20
AUTH_WINDOW_S = 4


def _guess(platform: Platform, n: int, path: str = "/v1/whoami", **headers: str) -> httpx.Response:
    forged = f"mrg_live_key_01guess{n:06d}_{'x' * 32}"
    return platform.http.get(platform.url + path, headers={"Authorization": f"Bearer {forged}", **headers})


def _whoami(platform: Platform, token: str) -> int:
    return platform.http.get(platform.url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code


def _bad_node_call(platform: Platform) -> httpx.Response:
    return platform.http.post(
        platform.url + "/v1/nodes/register", json={}, headers={"Authorization": "Bearer mrg_node_node_01nope_" + "y" * 32}
    )


def test_guessing_tokens_is_throttled_per_address(tmp_path: Path) -> None:
    """300 forged tokens in a row (each claiming another X-Forwarded-For, which nobody is
    trusted to set): after AUTH_QUOTA failures the address gets 429 ``auth-throttled`` with
    Retry-After and its credentials are not checked any more (a key never used from it is
    refused like a guess, so a right guess cannot be told from a wrong one), while a key
    that already worked from it keeps working. Node tokens count and are throttled too.
    Once the window has passed, the address is heard again."""
    with control_plane(tmp_path, auth_failure_quota=AUTH_QUOTA, auth_failure_window_s=AUTH_WINDOW_S) as platform:
        tenant_id, working_key = platform.tenant("acme", scopes=["read"])
        assert _whoami(platform, working_key) == 200  # it has worked from this address
        started = time.monotonic()
        answers = [_guess(platform, n, **{"X-Forwarded-For": f"203.0.113.{n % 250}"}) for n in range(300)]
        elapsed = time.monotonic() - started
        statuses = [a.status_code for a in answers]
        assert statuses[:AUTH_QUOTA] == [401] * AUTH_QUOTA and statuses[AUTH_QUOTA] == 429, statuses[: AUTH_QUOTA + 5]
        assert statuses.count(401) <= AUTH_QUOTA * (1 + int(elapsed // AUTH_WINDOW_S)), (statuses.count(401), elapsed)
        refused = answers[AUTH_QUOTA]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "auth-throttled" and "Retry-After" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= AUTH_WINDOW_S

        assert _whoami(platform, working_key) == 200  # already known here: still checked, still works
        fresh = platform.call("POST", f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["read"], "name": "new"})
        assert fresh.status_code == 201  # the operator's key has worked from here too
        assert _whoami(platform, fresh.json()["token"]) == 429  # right, but never seen here: not checked
        assert _bad_node_call(platform).status_code == 429

        time.sleep(AUTH_WINDOW_S + 0.5)
        assert _whoami(platform, fresh.json()["token"]) == 200  # the window has passed
        assert _guess(platform, 1000).status_code == 401
        node_answers = [_bad_node_call(platform).status_code for _ in range(AUTH_QUOTA + 1)]
        assert node_answers[: AUTH_QUOTA - 1] == [401] * (AUTH_QUOTA - 1) and node_answers[-1] == 429, node_answers
        assert _guess(platform, 1001).status_code == 429  # one budget per address, API keys and node tokens together


def test_forwarded_for_is_honoured_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    """Behind MOORAGE_TRUSTED_PROXIES, each forwarded client has its own budget."""
    with control_plane(tmp_path, auth_failure_quota=3, auth_failure_window_s=60, trusted_proxies="127.0.0.1") as platform:
        for client in ("198.51.100.1", "198.51.100.2"):
            statuses = [_guess(platform, n, **{"X-Forwarded-For": client}).status_code for n in range(4)]
            assert statuses == [401, 401, 401, 429], (client, statuses)
        assert _guess(platform, 9).status_code == 401  # the proxy's own address has its own budget as well


# What a tenant's build prints to take over the terminal of whoever reads its log:
# set the window title (OSC ... BEL), clear the screen (CSI 2J), the 8-bit CSI byte
# (C1 \x9b, no ESC needed), a bare carriage return to overwrite the line, and colour.
HOSTILE_LINES = [
    "step 1 \x1b]0;pwned\x07 done",
    "\x1b[2Jscreen cleared",
    "eight-bit \x9b2J csi",
    "innocent\rforged line",
    "\x1b[31mred\x1b[0m text",
]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def hostile_build_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A real server (no Docker: the deployment stays queued, then fails) whose
    deployment's build log holds HOSTILE_LINES; the CLI is pointed at it. (app, deployment id)."""
    # The source is never fetched (no workers); the git policy still checks the URL.
    with cli_tenant(tmp_path / "data", monkeypatch, git_allowed_networks="127.0.0.0/8") as served:
        url, app, token = served.url, served.app, served.token
        services = app.state.services
        assert main(["apps", "create", "web", "--json"]) == 0
        created = httpx.post(
            f"{url}/v1/apps/web/deployments", json={"git": {"url": "https://127.0.0.1:9/x.git", "ref": "main"}},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        assert created.status_code == 202, created.text
        deployment_id = created.json()["id"]
        log = BuildLog(services.deploys.deployments.log_path(deployment_id))
        for line in HOSTILE_LINES:
            log.line(line)
        services.deploys.deployments.fail_if_active(deployment_id, "build failed: \x1b]0;pwned\x07")
        yield "web", deployment_id


def _assert_terminal_safe(out: str) -> None:
    assert not CONTROL.search(out), f"control characters reach the terminal: {out!r}"
    assert "\\x1b]0;pwned\\x07" in out and "\\x1b[2J" in out and "\\x9b2J" in out  # shown, inert
    assert "innocent" in out and "forged line" in out  # a carriage return overwrites nothing
    assert "red text" in out  # colour is dropped, the text kept


def test_build_logs_never_reach_the_terminal_as_control_sequences(
    hostile_build_log: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, deployment_id = hostile_build_log
    for argv in (["logs", app, "--deployment", deployment_id], ["logs", app, "--deployment", deployment_id, "--follow"]):
        assert main(argv) == 0
        _assert_terminal_safe(capsys.readouterr().out)
    # deploy --wait and rollback --wait print the build log through follow_deployment
    out = io.StringIO()
    api = ApiClient(resolve())
    try:
        assert follow_deployment(api, app, deployment_id, out)["status"] == "failed"
    finally:
        api.close()
    _assert_terminal_safe(out.getvalue())
    assert main(["status", app]) == 0  # the deployment's reason, in the table
    status_out = capsys.readouterr().out
    assert not CONTROL.search(status_out) and "pwned" in status_out


def test_json_output_keeps_log_lines_exact_and_escaped(
    hostile_build_log: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, deployment_id = hostile_build_log
    assert main(["logs", app, "--deployment", deployment_id, "--json"]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out)
    # splitlines (like the server's SSE framing) takes "\r" as a line end: the rest is byte-exact
    assert json.loads(out)["lines"] == "\n".join(HOSTILE_LINES).splitlines()
    assert main(["logs", app, "--deployment", deployment_id, "--follow", "--json"]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out)
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["line"] for i in items if "line" in i] == "\n".join(HOSTILE_LINES).splitlines()


def test_streamed_model_output_never_reaches_the_terminal_as_control_sequences(capsys: pytest.CaptureFixture[str]) -> None:
    """``moorage chat --stream`` prints tokens as they come: model output is text from the
    server too (a prompt can make a model emit anything)."""
    events = [{"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]} for piece in HOSTILE_LINES]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"}))
    api = ApiClient(ClientConfig(url="http://moorage.test", api_key="mrg_live_x"), transport=transport)
    args = argparse.Namespace(model="tiny", prompt="hi", system=None, max_tokens=16, temperature=None, stream=True, json=False)
    try:
        assert run_chat(args, api) == 0
    finally:
        api.close()
    out = capsys.readouterr().out
    assert not CONTROL.search(out.replace("\n", "")), f"control characters reach the terminal: {out!r}"
    assert "\\x1b]0;pwned\\x07" in out and "\\x9b2J" in out and "\\x0d" in out and "red text" in out
