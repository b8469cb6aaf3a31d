"""HTTP-level limits against a real server (the app under uvicorn on loopback).

Oversized headers and bodies are refused without harm, and a slow-body client
(slowloris-style: headers sent, then the body trickled) is cut off within a bounded
time with 408 ``request-timeout`` while other requests keep being served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.settings import Settings
from tests.live_server import free_port, serving

UPLOAD_LIMIT = 64 * 1024
BODY_TOTAL_S = 2  # twice the idle limit (1 s): which of the two cut a body off shows in its time
BODY_IDLE_S = 1.5


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, migrated_database: Path) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(migrated_database, data_dir / "moorage.db")
    settings = Settings(
        data_dir=data_dir,
        base_domain="apps.test",
        port=free_port(),
        job_workers=0,
        reconcile_interval_s=0,
        database_purge_interval_s=0,
        max_upload_bytes=UPLOAD_LIMIT,
        request_body_timeout_s=BODY_TOTAL_S,
        request_body_idle_timeout_s=int(BODY_IDLE_S) or 1,
    )
    with serving(settings) as (base_url, app):
        operator = app.state.services.keys.bootstrap_operator("limits-operator").token
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {operator}"}) as client:
            tenant = client.post("/v1/tenants", json={"name": "limits"}).json()
            key = client.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "limits"}).json()
        token = key["token"]
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as tenant_client:
            assert tenant_client.post("/v1/apps", json={"name": "web"}).status_code == 201
            yield {"base_url": base_url, "port": settings.port, "token": token, "client": tenant_client}


def _is_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def _still_serving(live: dict[str, Any]) -> None:
    assert live["client"].get("/v1/apps").status_code == 200


def test_oversized_header_is_431_problem_and_the_server_keeps_serving(live) -> None:
    # Regression: uvicorn (h11) let a 64 KiB header through to the app; now 431 before any work.
    for path in ("/healthz", "/v1/apps"):
        response = httpx.get(f"{live['base_url']}{path}", headers={"X-Padding": "a" * 64 * 1024}, timeout=10)
        _is_problem(response, 431, "request-header-fields-too-large")
    assert httpx.get(f"{live['base_url']}/healthz", headers={"X-Padding": "a" * 16 * 1024}).status_code == 200
    _still_serving(live)


def test_a_megabyte_of_headers_is_refused_by_the_parser(live) -> None:
    try:
        response = httpx.get(f"{live['base_url']}/healthz", headers={"X-Padding": "a" * 1024 * 1024}, timeout=10)
        assert 400 <= response.status_code < 500
    except httpx.TransportError:
        pass  # uvicorn may reset the connection instead of answering
    _still_serving(live)


@pytest.mark.parametrize("idempotency_key", [None, "big-body-1"])
def test_json_body_over_the_limit_is_413_problem(live, idempotency_key: str | None) -> None:
    body = b'{"name": "big", "description": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    response = live["client"].post("/v1/apps", content=body, headers=headers)
    _is_problem(response, 413, "payload-too-large")
    _still_serving(live)


def test_upload_over_max_upload_bytes_is_413_declared_or_streamed(live) -> None:
    archive = os.urandom(UPLOAD_LIMIT * 2)
    headers = {"Content-Type": "application/gzip"}
    declared = live["client"].post("/v1/apps/web/deployments", content=archive, headers=headers)
    _is_problem(declared, 413, "payload-too-large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting the stream can stop it
        for offset in range(0, len(archive), 8192):
            yield archive[offset : offset + 8192]

    streamed = live["client"].post("/v1/apps/web/deployments", content=chunks(), headers=headers)
    _is_problem(streamed, 413, "payload-too-large")
    assert live["client"].get("/v1/apps/web/deployments").json()["items"] == []  # nothing was deployed
    _still_serving(live)


def _slow_request(live: dict[str, Any], path: str, extra: str, trickle_every_s: float) -> tuple[float, bytes]:
    """Send headers and then one body byte per ``trickle_every_s`` until the server answers or hangs up."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {live['token']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 100000\r\n{extra}\r\n"
    ).encode()
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", live["port"]), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        while time.monotonic() - started < 20:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # the server closed the connection
                received += chunk
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(b" ")
            time.sleep(trickle_every_s)
    return time.monotonic() - started, received


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/apps", ""), ("/v1/apps", "Idempotency-Key: slow-1\r\n"), ("/v1/apps/web/deployments", "")],
    ids=["json-body", "idempotent-json-body", "deployment-body"],
)
def test_a_trickled_body_is_cut_off_in_bounded_time(live, path: str, extra: str) -> None:
    # One byte every 0.3 s never trips the idle limit: only the total deadline can stop it.
    elapsed, received = _slow_request(live, path, extra, trickle_every_s=0.3)
    assert elapsed < BODY_TOTAL_S + 3, f"slow client held the connection for {elapsed:.1f} s"
    assert received.startswith(b"HTTP/1.1 408"), received[:300]
    assert b"application/problem+json" in received and b"request-timeout" in received
    _still_serving(live)


@pytest.mark.slow
def test_a_stalled_body_is_cut_off_at_the_idle_limit_while_others_are_served(live) -> None:
    head = (
        f"POST /v1/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {live['token']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    ).encode()
    with socket.create_connection(("127.0.0.1", live["port"]), timeout=10) as sock:
        sock.sendall(head)  # ... and then nothing
        started = time.monotonic()
        _still_serving(live)  # served while the stalled one waits
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"request-timeout" in answer, answer[:300]
    assert elapsed < BODY_TOTAL_S, f"idle body cut off only after {elapsed:.1f} s"  # the idle limit, not the total
    _still_serving(live)
