"""`moorage node run`: model directory + engine + supervisor, until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine.commands import (
    EngineCommand,
    EngineName,
    transformers_command,
    vllm_command,
)
from inference.engine.policy import SupervisorPolicy
from inference.engine.status import LogHeartbeatSink, NodeStatus
from inference.engine.supervisor import EngineSupervisor
from inference.model.inspect import inspect_model


@dataclass(frozen=True)
class NodeOptions:
    engine: EngineName
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    allow_public_bind: bool = False


def engine_command(options: NodeOptions) -> EngineCommand:
    if not (options.model_dir / "config.json").exists():
        raise FileNotFoundError(f"{options.model_dir} has no config.json: not a model directory")
    if options.engine == "vllm":
        return vllm_command(
            options.model_dir,
            served_model_name=options.served_model_name or options.model_dir.name,
            host=options.host,
            port=options.port,
            max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization,
            allow_public_bind=options.allow_public_bind,
        )
    if options.served_model_name:
        # `transformers serve` pins requests to the directory path (see engine.commands).
        raise ValueError("transformers serve cannot rename the model: omit --served-model-name")
    return transformers_command(
        options.model_dir, host=options.host, port=options.port, allow_public_bind=options.allow_public_bind
    )


def model_summary(model_dir: Path) -> dict[str, Any] | None:
    try:
        return inspect_model(model_dir)
    except (OSError, KeyError, ValueError):
        return None  # not an MoE checkpoint we can read: serve it anyway


def run_node(options: NodeOptions, policy: SupervisorPolicy | None = None) -> NodeStatus:
    supervisor = EngineSupervisor(
        engine_command(options),
        policy,
        heartbeat=LogHeartbeatSink(),
        model_info=model_summary(options.model_dir),
    )
    return supervisor.run_until_signal()
