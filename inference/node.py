"""`moorage node run`: model directory + engine + supervisor, until SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.engine.commands import (
    EngineCommand,
    EngineName,
    transformers_command,
    vllm_command,
)
from inference.engine.policy import SupervisorPolicy
from inference.engine.status import HeartbeatSink, LogHeartbeatSink, NodeStatus
from inference.engine.supervisor import EngineSupervisor
from inference.heartbeat_http import HttpHeartbeatSink
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
    # Control plane: register + heartbeat there; without a URL the heartbeat is only logged.
    control_url: str | None = None
    node_token: str | None = field(default=None, repr=False)  # repr=False: never printed
    public_model_name: str | None = None  # what tenants send; default: served name or directory name
    heartbeat_interval_s: float = 10.0
    expert_probe: tuple[str, ...] = ()  # texts routed once at start to report expert load

    @property
    def public_model(self) -> str:
        return self.public_model_name or self.served_model_name or self.model_dir.name


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


def heartbeat_sink(options: NodeOptions) -> HeartbeatSink:
    if not options.control_url:
        return LogHeartbeatSink()
    if not options.node_token:
        raise ValueError("--control-url needs a node token (--node-token or MOORAGE_NODE_TOKEN)")
    extra: dict[str, Any] = {}
    if options.expert_probe:
        from inference.model.inspect import expert_load  # torch: only when asked

        extra["expert_load"] = expert_load(options.model_dir, list(options.expert_probe))
    return HttpHeartbeatSink(options.control_url, options.node_token, public_model=options.public_model, extra=lambda: extra)


def run_node(options: NodeOptions, policy: SupervisorPolicy | None = None) -> NodeStatus:
    policy = policy or SupervisorPolicy(heartbeat_interval_s=options.heartbeat_interval_s)
    supervisor = EngineSupervisor(
        engine_command(options),
        policy,
        heartbeat=heartbeat_sink(options),
        model_info=model_summary(options.model_dir),
        redact=[options.node_token or ""],
    )
    return supervisor.run_until_signal()
