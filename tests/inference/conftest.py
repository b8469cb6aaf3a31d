"""Fixtures for inference tests: one tiny MoE checkpoint per session (built offline, no hub),
(helpers.py has ports and stand-in engine commands)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def offline_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never reach a hub; give transformers a writable cache of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory, offline_hub: None) -> tuple[Path, dict[str, Any]]:
    """(directory, manifest) of a tiny trained Qwen3-MoE: 16 experts, top-4, 2 layers."""
    pytest.importorskip("torch")
    from inference.model.make_tiny_moe import make_tiny_moe

    out = tmp_path_factory.mktemp("tiny-moe")
    manifest = make_tiny_moe(out, experts=16, top_k=4, layers=2, hidden=64, seed=0, train_steps=40, batch_size=8)
    return out, manifest
