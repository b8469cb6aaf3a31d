"""The tiny MoE checkpoint: trained (loss drops, corpus-like output), saved in the layout
vLLM's Qwen3-MoE loader reads, with a ChatML chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.slow

TinyMoe = tuple[Path, dict[str, Any]]


def _keys(model_dir: Path) -> set[str]:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def test_checkpoint_keys_match_vllm_qwen3_moe_loader(tiny_moe: TinyMoe) -> None:
    model_dir, _ = tiny_moe
    keys = _keys(model_dir)
    # vLLM maps per-expert checkpoint names onto its fused MoE weights; fused
    # `experts.gate_up_proj` tensors (transformers 5's in-memory layout) must not leak out.
    for layer in range(2):
        prefix = f"model.layers.{layer}"
        assert f"{prefix}.mlp.gate.weight" in keys  # the router
        for expert in range(16):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert f"{prefix}.mlp.experts.{expert}.{proj}.weight" in keys
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            assert f"{prefix}.self_attn.{proj}.weight" in keys
        assert f"{prefix}.input_layernorm.weight" in keys and f"{prefix}.post_attention_layernorm.weight" in keys
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert not any(key.endswith(("gate_up_proj", "experts.down_proj")) for key in keys)


def test_config_has_moe_fields_for_every_loader(tiny_moe: TinyMoe) -> None:
    model_dir, _ = tiny_moe
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["model_type"] == "qwen3_moe"
    assert config["num_experts"] == config["num_local_experts"] == 16
    assert config["num_experts_per_tok"] == 4
    assert config["moe_intermediate_size"] == 32 and config["decoder_sparse_step"] == 1
    assert config["mlp_only_layers"] == [] and config["rope_theta"] == 10000.0
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [config["eos_token_id"], config["pad_token_id"]]


def test_tokenizer_has_chatml_template(tiny_moe: TinyMoe) -> None:
    from transformers import AutoTokenizer

    model_dir, _ = tiny_moe
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and tokenizer_config["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("<|im_start|>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1  # special tokens are single tokens


def test_training_lowers_the_loss(tiny_moe: TinyMoe) -> None:
    model_dir, manifest = tiny_moe
    assert json.loads((model_dir / "moorage-model.json").read_text()) == manifest
    training = manifest["training"]
    assert training["steps"] == 40 and training["seconds"] > 0
    # Untrained ≈ ln(vocab) ≈ 6.9; the run must clearly learn the corpus.
    assert training["final_loss"] < training["initial_loss"] - 1.5


def test_greedy_generation_produces_corpus_words(tiny_moe: TinyMoe) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.model.training_text import plain_lines

    model_dir, _ = tiny_moe
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer("The engine", return_tensors="pt")["input_ids"]
    text = tokenizer.decode(
        model.generate(ids, min_new_tokens=12, max_new_tokens=20, do_sample=False)[0], skip_special_tokens=True
    )
    vocabulary = {word.strip(".,").lower() for line in plain_lines() for word in line.split()}
    words = [word.strip(".,").lower() for word in text.split()]
    assert len(words) >= 6
    assert sum(word in vocabulary for word in words) / len(words) >= 0.6, text
