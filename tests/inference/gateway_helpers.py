"""Helpers for gateway tests: a real control plane on a socket, stand-in OpenAI engines
(see stand_in_openai_engine.py: a stand-in, not an inference engine) and the calls an
operator, a node and a tenant make."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from litestar import Litestar
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control.settings import Settings
from inference.engine.commands import EngineCommand
from tests.inference.helpers import free_port
from tests.live_server import free_port as free_cp_port
from tests.live_server import serving

STAND_IN_OPENAI = Path(__file__).with_name("stand_in_openai_engine.py")


@dataclass
class StandIn:
    base_url: str
    process: subprocess.Popen[bytes]

    def last_request(self) -> dict[str, Any]:
        return httpx.get(self.base_url + "/last-request", timeout=5).json()  # type: ignore[no-any-return]


@contextmanager
def stand_in_engine(*flags: str) -> Iterator[StandIn]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(STAND_IN_OPENAI), "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "stand-in engine did not start"
            time.sleep(0.05)
        yield StandIn(base_url, process)
    finally:
        process.kill()
        process.wait(timeout=10)


def stand_in_openai_command(*flags: str, port: int | None = None) -> EngineCommand:
    """For EngineSupervisor: the stand-in OpenAI engine as a supervised engine."""
    port = port or free_port()
    return EngineCommand(
        engine="transformers",
        argv=[sys.executable, str(STAND_IN_OPENAI), "--port", str(port), *flags],
        host="127.0.0.1",
        port=port,
        served_model_name="stand-in",
    )


@dataclass
class Platform:
    url: str
    app: Litestar
    operator_token: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.operator_token}"} | kwargs.pop("headers", {})
        return self.http.request(method, self.url + path, headers=headers, **kwargs)

    def enroll(self, name: str = "node") -> tuple[str, str]:
        response = self.call("POST", "/v1/nodes", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()["node"]["id"], response.json()["token"]

    def register(
        self, token: str, base_url: str, model: str = "tiny", engine_model: str = "stand-in", **report: Any
    ) -> httpx.Response:
        body = {"state": "healthy", "engine": "transformers", "base_url": base_url,
                "models": [{"name": model, "engine_model": engine_model}], **report}  # fmt: skip
        return self.http.post(self.url + "/v1/nodes/register", json=body, headers={"Authorization": f"Bearer {token}"})

    def node(self, base_url: str, model: str = "tiny", engine_model: str = "stand-in", name: str = "node") -> str:
        node_id, token = self.enroll(name)
        response = self.register(token, base_url, model, engine_model)
        assert response.status_code == 200, response.text
        return node_id

    def tenant(self, name: str, scopes: list[str] | None = None) -> tuple[str, str]:
        """(tenant id, key token)."""
        tenant = self.call("POST", "/v1/tenants", json={"name": name})
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        key = self.call("POST", f"/v1/tenants/{tenant_id}/keys", json={"scopes": scopes or ["inference"], "name": "t"})
        assert key.status_code == 201, key.text
        return tenant_id, key.json()["token"]

    def chat(self, token: str, model: str = "tiny", **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **body}
        return self.call("POST", "/v1/chat/completions", token, json=payload)


@contextmanager
def control_plane(tmp_path: Path, wrap: Callable[[ASGIApp], ASGIApp] | None = None, **overrides: Any) -> Iterator[Platform]:
    # API rate limits are tested in tests/control; here they would only throttle polling loops.
    overrides = {"rate_limit_key_quota": 100_000, "rate_limit_tenant_quota": 100_000, **overrides}
    settings = Settings(
        data_dir=tmp_path / "cp", port=free_cp_port(), base_domain="apps.test", job_workers=0, reconcile_interval_s=0,
        **overrides,
    )  # fmt: skip
    with serving(settings, wrap) as (url, app):
        operator = app.state.services.keys.bootstrap_operator("gateway-tests")
        platform = Platform(url, app, operator.token)
        try:
            yield platform
        finally:
            platform.http.close()


def asgi_2_4_send(app: ASGIApp) -> ASGIApp:
    """A stand-in for a server that follows ASGI 2.4, which uvicorn (0.3x) does not: once
    the client is gone, ``send`` raises an ``OSError`` instead of dropping the message
    (hypercorn does; uvicorn shipped it, reverted it, and has it in review again)."""

    async def strict(scope: Scope, receive: Receive, send: Send) -> None:
        gone = False

        async def send_or_raise(message: Message) -> None:
            nonlocal gone
            if not gone and message["type"] == "http.response.start":
                with anyio.move_on_after(0):  # uvicorn answers a closed connection at once, else waits
                    gone = (await receive())["type"] == "http.disconnect"
            if gone:
                raise OSError("the client disconnected")
            await send(message)

        await app(scope, receive, send_or_raise)

    return strict


def sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
