"""Read a checkpoint directory's config and tensor shapes without loading weights
(safetensors headers only), so inspecting a 30B model costs milliseconds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_config(model_dir: str | Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((Path(model_dir) / "config.json").read_text())
    return config


def safetensors_files(model_dir: str | Path) -> list[Path]:
    root = Path(model_dir)
    index = root / SAFETENSORS_INDEX
    if index.exists():  # sharded checkpoint
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / shard for shard in shards]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {root}")
    return files


def tensor_shapes(model_dir: str | Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                yield key, tuple(handle.get_slice(key).get_shape())


def num_experts(config: dict[str, Any]) -> int:
    # transformers 5 writes num_local_experts; 4.x and vLLM read num_experts.
    return int(config.get("num_experts") or config["num_local_experts"])
