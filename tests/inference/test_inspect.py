"""`inspect_model` and `expert_load` on the tiny checkpoint, and `moorage model inspect`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from control.cli.main import main
from inference.model.inspect import expert_load, inspect_model

pytestmark = pytest.mark.slow

TinyMoe = tuple[Path, dict[str, Any]]


def test_total_and_active_parameters(tiny_moe: TinyMoe) -> None:
    model_dir, manifest = tiny_moe
    report = inspect_model(model_dir)
    assert report["architecture"] == "Qwen3MoeForCausalLM"
    assert (report["experts"], report["top_k"], report["layers"], report["hidden"]) == (16, 4, 2, 64)
    assert report["total_parameters"] == manifest["parameters"]
    # Routed experts: 2 layers × 16 experts × 3 projections × 64 × 32.
    assert report["expert_parameters"] == 2 * 16 * 3 * 64 * 32
    dense = report["total_parameters"] - report["expert_parameters"]
    assert report["active_parameters"] == dense + report["expert_parameters"] * 4 // 16
    assert report["total_parameters"] > report["active_parameters"]


def test_expert_load_counts_every_routed_token(tiny_moe: TinyMoe) -> None:
    model_dir, _ = tiny_moe
    texts = ["The supervisor starts the engine and waits until it is healthy.", "What is a tenant?"]
    load = expert_load(model_dir, texts)
    assert load["tokens"] > 10 and len(load["layers"]) == 2
    for layer in load["layers"]:
        assert len(layer["load"]) == 16
        assert sum(layer["load"]) == load["tokens"] * 4  # each token goes to top_k experts
        assert math.isclose(sum(layer["utilisation"]), 16, rel_tol=0.01)  # mean utilisation is 1
        assert 0 <= layer["load_entropy"] <= 1 and 0 <= layer["mean_router_entropy"] <= 1
        assert layer["idle_experts"] == layer["load"].count(0)


def test_cli_inspect_prints_json(tiny_moe: TinyMoe, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, _ = tiny_moe
    assert main(["model", "inspect", str(model_dir), "--load", "A node is a machine."]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["experts"] == 16 and report["expert_load"]["layers"][0]["load"]
