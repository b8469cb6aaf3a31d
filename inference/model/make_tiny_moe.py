"""Build a tiny, trained `Qwen3MoeForCausalLM` checkpoint fully offline.

Output directory (the layout vLLM and `transformers serve` load):
config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with the ChatML chat template), moorage-model.json (manifest)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from inference.model.tiny_config import TinyMoeShape
from inference.model.tokenizer import train_tokenizer
from inference.model.train import TrainingResult, token_stream, train
from inference.model.training_text import training_documents

MANIFEST = "moorage-model.json"


def make_tiny_moe(
    out_dir: str | Path,
    *,
    experts: int = 16,
    top_k: int = 4,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    train_steps: int = 120,
    batch_size: int = 16,
    max_train_seconds: float | None = 90.0,
) -> dict[str, Any]:
    """Train tokenizer and model, save both, and return the manifest written beside them."""
    import torch
    from transformers import GenerationConfig, Qwen3MoeForCausalLM

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    documents = training_documents()
    shape = TinyMoeShape(experts=experts, top_k=top_k, layers=layers, hidden=hidden)
    tokenizer = train_tokenizer(documents, shape.vocab_size)
    token_ids = _token_ids(tokenizer)
    # The real vocabulary may come out smaller than asked on a small corpus.
    shape = TinyMoeShape(**{**shape.__dict__, "vocab_size": len(tokenizer)})
    model = Qwen3MoeForCausalLM(shape.to_config(**token_ids))

    result = train(
        model,
        token_stream(tokenizer, documents, seed),
        steps=train_steps,
        seed=seed,
        batch_size=batch_size,
        max_seconds=max_train_seconds,
    )

    model.generation_config = GenerationConfig(
        eos_token_id=[token_ids["eos_token_id"], token_ids["pad_token_id"]],
        pad_token_id=token_ids["pad_token_id"],
        max_new_tokens=64,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _add_portable_config_keys(out / "config.json")
    _add_portable_tokenizer_keys(out / "tokenizer_config.json", tokenizer.chat_template)
    manifest = _manifest(model, shape, seed, result, time.monotonic() - started)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _token_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def _add_portable_config_keys(config_path: Path) -> None:
    """transformers 5 writes `num_local_experts` and `rope_parameters`; loaders built on
    transformers 4.x (older vLLM releases) read `num_experts` and `rope_theta` and would
    silently fall back to 128 experts. Write both spellings so any loader agrees."""
    config = json.loads(config_path.read_text())
    config.setdefault("num_experts", config["num_local_experts"])
    rope = config.get("rope_parameters") or {}
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _add_portable_tokenizer_keys(path: Path, chat_template: str) -> None:
    """transformers 5 names the class `TokenizersBackend` and keeps the template in
    chat_template.jinja; 4.x loaders know `PreTrainedTokenizerFast` and read the template
    from tokenizer_config.json. Both spellings load the same tokenizer.json."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = chat_template
    path.write_text(json.dumps(config, indent=2) + "\n")


def _manifest(model: Any, shape: TinyMoeShape, seed: int, result: TrainingResult, seconds: float) -> dict[str, Any]:
    return {
        "kind": "moorage-tiny-moe",
        "architecture": "Qwen3MoeForCausalLM",
        "shape": shape.__dict__,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": result.__dict__,
        "build_seconds": round(seconds, 2),
    }
