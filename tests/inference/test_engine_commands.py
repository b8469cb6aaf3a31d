"""Engine argv builders (vLLM flags as in DESIGN.md), loopback-only binding, and the
small parsers behind NodeStatus (nvidia-smi, vLLM in-flight gauges, backoff)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli.main import main
from inference.engine.bind import UnsafeBindAddress, check_bind_host
from inference.engine.commands import transformers_command, vllm_command
from inference.engine.gpu import GpuMemory, parse_nvidia_smi
from inference.engine.inflight import parse_vllm_in_flight
from inference.engine.policy import SupervisorPolicy


def test_vllm_argv_has_the_documented_flags() -> None:
    command = vllm_command(
        "/models/qwen3-moe", served_model_name="qwen3-moe", port=8100, max_model_len=8192, gpu_memory_utilization=0.85
    )
    assert command.argv == [
        "vllm", "serve", "/models/qwen3-moe",
        "--served-model-name", "qwen3-moe",
        "--host", "127.0.0.1",
        "--port", "8100",
        "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85",
    ]  # fmt: skip
    assert command.base_url == "http://127.0.0.1:8100"
    assert command.served_model_name == "qwen3-moe"
    assert (command.health_path, command.metrics_path) == ("/health", "/metrics")
    assert command.env["HF_HUB_OFFLINE"] == "1"


def test_vllm_optional_chat_template_and_dummy_weights() -> None:
    argv = vllm_command("/m", served_model_name="m", chat_template="/m/chat.jinja", load_format="dummy").argv
    assert argv[-4:] == ["--chat-template", "/m/chat.jinja", "--load-format", "dummy"]
    with pytest.raises(ValueError):
        vllm_command("/m", served_model_name="m", gpu_memory_utilization=1.5)


def test_transformers_argv_pins_the_model_directory() -> None:
    command = transformers_command("/models/tiny", port=8200, executable="transformers")
    assert command.argv == [
        "transformers", "serve", "/models/tiny",
        "--device", "cpu", "--dtype", "auto",
        "--host", "127.0.0.1", "--port", "8200",
        "--log-level", "warning",
    ]  # fmt: skip
    # transformers serve has no --served-model-name: requests name the directory itself.
    assert command.served_model_name == "/models/tiny"
    assert command.metrics_path is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "8.8.8.8", "example.com"])
def test_engines_refuse_wildcard_and_public_addresses(host: str) -> None:
    with pytest.raises(UnsafeBindAddress):
        vllm_command("/m", served_model_name="m", host=host)
    with pytest.raises(UnsafeBindAddress):
        transformers_command("/m", host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "10.1.2.3", "192.168.0.7", "172.16.5.5"])
def test_loopback_and_private_addresses_are_allowed(host: str) -> None:
    assert check_bind_host(host) == host


def test_public_bind_only_when_explicitly_allowed() -> None:
    assert vllm_command("/m", served_model_name="m", host="0.0.0.0", allow_public_bind=True).host == "0.0.0.0"


def test_nvidia_smi_and_vllm_gauges_parse() -> None:
    assert parse_nvidia_smi("1024, 81559\n30000, 81559\n") == [GpuMemory(0, 1024, 81559), GpuMemory(1, 30000, 81559)]
    assert parse_nvidia_smi("") is None
    metrics = (
        "# HELP vllm:num_requests_running Number of requests running\n"
        'vllm:num_requests_running{model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{model_name="m"} 2.0\n'
        "vllm:generation_tokens_total 99.0\n"
    )
    assert parse_vllm_in_flight(metrics) == 5
    assert parse_vllm_in_flight("other_metric 1\n") is None


def test_backoff_grows_exponentially_to_a_cap() -> None:
    policy = SupervisorPolicy(backoff_initial_s=1, backoff_factor=2, backoff_max_s=5)
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_node_run_refuses_unsafe_options_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}")
    base = ["node", "run", "--engine", "transformers", "--model", str(tmp_path), "--port", "9"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["error"] == "invalid_node_options" and "0.0.0.0" in error["detail"]
    assert main([*base, "--served-model-name", "tiny"]) == 2  # transformers serve cannot rename
    assert main(["node", "run", "--engine", "vllm", "--model", str(tmp_path / "missing")]) == 2
