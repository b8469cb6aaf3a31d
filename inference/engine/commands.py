"""Engine command lines. Both engines speak OpenAI's API; they differ in how the model
is named and what they expose:

- vLLM (GPU): `vllm serve DIR --served-model-name NAME ...`; clients send `model: NAME`;
  `/health`, and Prometheus `/metrics` (requests running/waiting).
- `transformers serve` (CPU, transformers 5.x): the positional FORCE_MODEL preloads DIR
  before the server listens and pins every request to it; it has no --served-model-name,
  so a request's `model` must be omitted or equal DIR exactly (else 400). `/v1/models`
  lists the HF cache, not the pinned model, so health is `/health`. No metrics endpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inference.engine.bind import check_bind_host

EngineName = Literal["vllm", "transformers"]


@dataclass(frozen=True)
class EngineCommand:
    engine: EngineName
    argv: list[str]
    host: str
    port: int
    served_model_name: str  # what clients put in the request's `model`
    health_path: str = "/health"
    metrics_path: str | None = None  # Prometheus text, where the engine has it
    env: dict[str, str] = field(default_factory=dict)  # added to the node's environment

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def vllm_command(
    model_dir: str | Path,
    *,
    served_model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int = 4096,
    gpu_memory_utilization: float = 0.9,
    chat_template: str | Path | None = None,
    load_format: str | None = None,
    allow_public_bind: bool = False,
    executable: str = "vllm",
) -> EngineCommand:
    """`--chat-template` only for tokenizers without one; `load_format="dummy"` gives random
    weights at the real shapes (sizing a GPU without the weights)."""
    check_bind_host(host, allow_public=allow_public_bind)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("gpu_memory_utilization is a fraction in (0, 1]")
    argv = [
        executable, "serve", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", str(gpu_memory_utilization),
    ]  # fmt: skip
    if chat_template is not None:
        argv += ["--chat-template", str(chat_template)]
    if load_format is not None:
        argv += ["--load-format", load_format]
    return EngineCommand(
        engine="vllm",
        argv=argv,
        host=host,
        port=port,
        served_model_name=served_model_name,
        metrics_path="/metrics",
        env={"HF_HUB_OFFLINE": "1"},  # a node serves what is on its disk, never downloads
    )


def transformers_command(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    dtype: str = "auto",
    log_level: str = "warning",  # uvicorn still logs each request; "info" adds the config dump
    allow_public_bind: bool = False,
    executable: str | None = None,
) -> EngineCommand:
    check_bind_host(host, allow_public=allow_public_bind)
    model = str(model_dir)
    argv = [
        executable or transformers_executable(), "serve", model,
        "--device", device,
        "--dtype", dtype,
        "--host", host,
        "--port", str(port),
        "--log-level", log_level,
    ]  # fmt: skip
    return EngineCommand(
        engine="transformers",
        argv=argv,
        host=host,
        port=port,
        served_model_name=model,
        # Plain output (no rich tables on a pipe) and never a hub download.
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "NO_COLOR": "1"},
    )


def transformers_executable() -> str:
    """The `transformers` CLI of this interpreter's environment, even when PATH lacks it."""
    beside = Path(sys.executable).parent / "transformers"
    if beside.exists():
        return str(beside)
    return shutil.which("transformers") or "transformers"


def engine_environment(command: EngineCommand) -> dict[str, str]:
    return {**os.environ, **command.env}
