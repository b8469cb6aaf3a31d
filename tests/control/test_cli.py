"""The server-side commands: bootstrap, migrate, serve (the README's run command)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from control.cli.main import main
from tests.live_server import free_port


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOORAGE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_bootstrap_prints_once_and_writes_a_private_file(data_dir: Path, capsys) -> None:
    key_file = data_dir.parent / "operator.key"
    assert main(["admin", "bootstrap", "--output-file", str(key_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["token"].startswith(f"mrg_live_{printed['key_id']}_")
    assert key_file.read_text().strip() == printed["token"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # A second bootstrap refuses (exit 3) rather than minting keys by accident.
    assert main(["admin", "bootstrap"]) == 3
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["error"] == "already-bootstrapped"
    assert main(["admin", "bootstrap", "--another"]) == 0


def test_migrate_reports_the_revision(data_dir: Path, capsys) -> None:
    assert main(["migrate"]) == 0
    assert json.loads(capsys.readouterr().out)["migrated"] is True


def test_check_host_names_what_a_bare_host_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """What deploy/dev.sh run prints when it cannot set the host up: /readyz's checks."""
    monkeypatch.setenv("MOORAGE_DOCKER_URL", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("MOORAGE_TRAEFIK_PING_ADDRESS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("MOORAGE_TRAEFIK_DYNAMIC_DIR", str(tmp_path / "no-routes"))
    monkeypatch.setenv("MOORAGE_TRAEFIK_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["admin", "check-host", "--json"]) == 6  # unavailable
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is False
    assert [p["component"] for p in report["problems"]] == list(report["checks"])  # every one is missing
    assert main(["admin", "check-host"]) == 6
    text = capsys.readouterr().out
    assert f"MISSING  docker: no Docker engine socket at {tmp_path}/no-docker.sock" in text
    assert text.count("-> ") == len(report["problems"]) and "sudo bash deploy/host-setup.sh" in text


def test_server_can_require_an_operator_key(tmp_path: Path) -> None:
    env = {**os.environ, "MOORAGE_DATA_DIR": str(tmp_path), "MOORAGE_REQUIRE_OPERATOR_KEY": "true"}
    env["MOORAGE_PORT"] = str(free_port())
    refused = subprocess.run(
        [sys.executable, "-m", "control.cli.main", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "moorage admin bootstrap" in refused.stderr


def test_moorage_serve_answers_health_and_openapi(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MOORAGE_DATA_DIR": str(tmp_path), "MOORAGE_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "control.cli.main", "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "server did not come up in 30 s"
                time.sleep(0.2)
        assert health.status_code == 200
        assert health.headers["x-request-id"]
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
        assert spec["openapi"].startswith("3.1") and "/v1/apps" in spec["paths"]
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=15)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert requests and all(line["request_id"] for line in requests)
    assert (tmp_path / "moorage.db").exists()
