"""The CLI waits out 429 and 503 and succeeds without duplicating anything.

429 is the real server's: a tenant rate limit of 1 request per 2 s window (operator limits
endpoint). 503 comes from ``FlakyProxy``, a TEST STAND-IN (not part of moorage) in front
of the real server: for the first N mutating requests it forwards the request to the server
(so the app really is created) and then answers the client 503 + Retry-After, as a gateway
losing the answer would. The CLI's retry carries the same Idempotency-Key, so the server
replays the stored answer instead of creating a second app.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from control.cli.main import main
from control.security.principal import Principal
from control.settings import Settings
from control.store.models import IdempotencyRecordRow
from tests.live_server import free_port, serving


@dataclass
class Seen:
    method: str
    path: str
    key: str | None
    status: int


@dataclass
class FlakyProxy:
    """Test stand-in: forwards to ``upstream``; the first ``fail_mutating`` mutating
    requests are forwarded, then answered 503 with ``Retry-After: 1``."""

    upstream: str
    fail_mutating: int = 0
    seen: list[Seen] = field(default_factory=list)

    def serve(self) -> tuple[str, http.server.ThreadingHTTPServer]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                answer = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body, timeout=30)
                status, payload, out_headers = answer.status_code, answer.content, answer.headers
                if self.command != "GET" and proxy.fail_mutating > 0:
                    proxy.fail_mutating -= 1
                    status, out_headers = 503, httpx.Headers({"Retry-After": "1", "Content-Type": "application/problem+json"})
                    payload = json.dumps({"code": "stand-in-unavailable", "detail": "test stand-in: answer lost"}).encode()
                proxy.seen.append(Seen(self.command, self.path, self.headers.get("idempotency-key"), status))
                self.send_response(status)
                for name in ("content-type", "retry-after", "idempotent-replayed"):
                    if name in out_headers:
                        self.send_header(name, out_headers[name])
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _relay

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}", server


@dataclass
class Setup:
    app: object
    url: str
    tenant_id: str
    token: str
    operator: str
    key_id: str


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), rate_limit_window_s=2, rate_limit_cache_ttl_s=0,
                        job_workers=0, reconcile_interval_s=0)  # fmt: skip
    with serving(settings) as (url, app):
        services = app.state.services
        tenant = services.tenants.create("retry")
        issued_op = services.keys.bootstrap_operator("op")
        issuer = Principal.of(issued_op.key.id, None, issued_op.key.scopes)
        issued = services.keys.issue(issuer, tenant.id, name="cli", scopes=["admin"], expires_at=None)
        monkeypatch.setenv("MOORAGE_API_KEY", issued.token)
        monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
        yield Setup(app, url, tenant.id, issued.token, issued_op.token, issued.key.id)


def _apps(setup: Setup) -> list[str]:
    r = httpx.get(setup.url + "/v1/apps", headers={"Authorization": f"Bearer {setup.token}"})
    return [a["name"] for a in r.json()["items"]]


def _records(setup: Setup, key: str) -> list[IdempotencyRecordRow]:
    with setup.app.state.services.db.read() as session:  # type: ignore[attr-defined]
        return list(session.scalars(select(IdempotencyRecordRow).where(IdempotencyRecordRow.idempotency_key == key)))


def _create_through(
    proxy: FlakyProxy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict, str]:
    url, server = proxy.serve()
    monkeypatch.setenv("MOORAGE_URL", url)
    try:
        code = main(["apps", "create", "web", "--json", "--retry-for", "30"])
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def test_429_from_the_tenant_rate_limit_is_waited_out(setup: Setup, capsys, monkeypatch) -> None:
    limits = httpx.put(f"{setup.url}/v1/tenants/{setup.tenant_id}/limits", json={"tenant_quota": 1},
                       headers={"Authorization": f"Bearer {setup.operator}"})  # fmt: skip
    assert limits.status_code == 200, limits.text
    proxy = FlakyProxy(setup.url)
    assert _apps(setup) == []  # spends the window's only request
    code, created, err = _create_through(proxy, capsys, monkeypatch)
    assert code == 0 and created["name"] == "web", err
    posts = [s for s in proxy.seen if s.method == "POST"]
    assert posts[0].status == 429 and posts[-1].status == 201
    assert len({s.key for s in posts}) == 1 and posts[0].key  # one key across every attempt
    assert "retrying" in err
    records = _records(setup, posts[0].key)
    assert len(records) == 1 and records[0].state == "completed" and records[0].response_status == 201


def test_503_after_the_server_acted_is_retried_with_the_same_key_and_replayed(setup: Setup, capsys, monkeypatch) -> None:
    proxy = FlakyProxy(setup.url, fail_mutating=2)
    code, created, err = _create_through(proxy, capsys, monkeypatch)
    assert code == 0 and created["name"] == "web", err
    posts = [s for s in proxy.seen if s.method == "POST"]
    assert [s.status for s in posts] == [503, 503, 201]
    assert len({s.key for s in posts}) == 1
    assert _apps(setup) == ["web"]  # exactly one app, although the server saw three POSTs
    records = _records(setup, posts[0].key)
    assert len(records) == 1 and records[0].response_status == 201


def test_409_while_the_same_key_is_in_flight_is_waited_out_then_answered(setup: Setup, capsys, monkeypatch) -> None:
    import uuid

    from control.cli.client import http as cli_http
    from control.domain.idempotency import Claimed, fingerprint

    fixed = uuid.UUID(int=7)
    monkeypatch.setattr(cli_http.uuid, "uuid4", lambda: fixed)
    body = httpx.Request("POST", setup.url, json={"name": "web"}).content  # the bytes the CLI sends
    services = setup.app.state.services  # type: ignore[attr-defined]
    # the CLI's own request, as if an earlier attempt whose answer was lost were still running
    claim = services.idempotency.claim(setup.key_id, setup.tenant_id, f"cli-{fixed}", fingerprint("POST", "/v1/apps", "", body))
    assert isinstance(claim, Claimed)
    threading.Timer(1.5, services.idempotency.release, args=(claim,)).start()
    monkeypatch.setenv("MOORAGE_URL", setup.url)
    code = main(["apps", "create", "web", "--json", "--retry-for", "30"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["name"] == "web", captured.err
    assert "still being processed" in captured.err and "retrying in" in captured.err  # it said why it waited
    assert _apps(setup) == ["web"]
