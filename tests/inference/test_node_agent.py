"""The node agent's side of registration: the supervisor's heartbeats go to a real control
plane through HttpHeartbeatSink (engine: the stand-in OpenAI engine, see its docstring)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.engine.policy import SupervisorPolicy
from inference.engine.supervisor import EngineSupervisor
from inference.heartbeat_http import HttpHeartbeatSink, node_id_of
from tests.inference.gateway_helpers import (
    Platform,
    control_plane,
    stand_in_openai_command,
)

FAST = SupervisorPolicy(
    health_timeout_s=20, health_interval_s=0.05, heartbeat_interval_s=0.2, drain_grace_s=2, terminate_timeout_s=2
)


def _wait_status(platform: Platform, node_id: str, status: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        node = platform.call("GET", f"/v1/nodes/{node_id}").json()
        if node["status"] == status:
            return node
        assert time.monotonic() < deadline, f"node stayed {node['status']}"
        time.sleep(0.1)


def test_a_supervised_node_registers_heartbeats_and_serves(tmp_path: Path) -> None:
    with control_plane(tmp_path) as platform:
        node_id, token = platform.enroll("agent")
        sink = HttpHeartbeatSink(platform.url, token, public_model="tiny")
        supervisor = EngineSupervisor(stand_in_openai_command(), FAST, heartbeat=sink, gpu_probe=lambda: None)
        supervisor.start()
        try:
            node = _wait_status(platform, node_id, "healthy")
            assert node["models"] == [{"name": "tiny", "engine_model": "stand-in"}]
            assert node["base_url"] == supervisor.command.base_url and node["report"]["pid"] > 0
            _, key = platform.tenant("acme")
            assert platform.chat(key, max_tokens=3).status_code == 200
        finally:
            supervisor.drain()
        assert _wait_status(platform, node_id, "stopped")["state"] == "stopped"  # drained: the last beat said so
        assert platform.chat(key).status_code == 503


def test_token_shape_is_checked_before_anything_starts(tmp_path: Path) -> None:
    assert node_id_of("mrg_node_node_01abc_secret_with_underscores") == "node_01abc"
    with pytest.raises(ValueError):
        node_id_of("mrg_live_key_01abc_secret")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = [sys.executable, "-m", "control.cli.main", "node", "run", "--engine", "transformers", "--model", str(model)]
    for extra in (["--control-url", "http://127.0.0.1:1"], ["--control-url", "http://127.0.0.1:1", "--node-token", "nope"]):
        result = subprocess.run(base + extra, check=False, capture_output=True, text=True, timeout=60, env={"PATH": ""})
        assert result.returncode == 2, result.stderr
        assert "invalid_node_options" in result.stdout + result.stderr
