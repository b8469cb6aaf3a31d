"""What an MoE checkpoint is: total vs active parameters, experts, top-k, shape; and how
its router spreads real tokens over the experts (per-layer load, utilisation, entropy)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from inference.model.checkpoint import num_experts, read_config, tensor_shapes

EXPERT_MARKER = ".mlp.experts."  # routed experts: only top_k of them run per token


def inspect_model(model_dir: str | Path) -> dict[str, Any]:
    config = read_config(model_dir)
    experts, top_k = num_experts(config), int(config["num_experts_per_tok"])
    total = expert = 0
    for key, shape in tensor_shapes(model_dir):
        count = math.prod(shape)
        total += count
        if EXPERT_MARKER in key:
            expert += count
    # Everything else (attention, router gate, shared experts, norms, embeddings) runs
    # for every token; routed experts contribute top_k / experts of their weights.
    active = total - expert + expert * top_k // experts
    return {
        "architecture": (config.get("architectures") or [None])[0],
        "total_parameters": total,
        "active_parameters": active,
        "expert_parameters": expert,
        "experts": experts,
        "top_k": top_k,
        "layers": int(config["num_hidden_layers"]),
        "hidden": int(config["hidden_size"]),
        "vocab": int(config["vocab_size"]),
        "moe_intermediate": config.get("moe_intermediate_size"),
    }


def expert_load(model_dir: str | Path, texts: list[str]) -> dict[str, Any]:
    """Route `texts` through the model on CPU and count, per layer, the tokens each expert got.

    utilisation = load ÷ fair share (tokens × top_k ÷ experts): 1.0 everywhere is perfect balance.
    load_entropy = entropy of the load distribution ÷ log(E): 1.0 is perfectly even.
    mean_router_entropy = mean per-token entropy of the router softmax ÷ log(E):
    near 1.0 means the router is undecided, near 0 means confident choices."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    experts, top_k = num_experts(model.config.to_dict()), int(model.config.num_experts_per_tok)
    counts: list[torch.Tensor] = []
    entropy_sums: list[float] = []
    tokens = 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            router_logits = model(input_ids=ids, output_router_logits=True).router_logits
            tokens += ids.shape[1]
            for layer, logits in enumerate(router_logits):  # (tokens, experts) per layer
                chosen = logits.topk(top_k, dim=-1).indices.flatten()
                layer_counts = torch.bincount(chosen, minlength=experts)
                probs = logits.float().softmax(dim=-1)
                entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).sum())
                if layer == len(counts):
                    counts.append(layer_counts)
                    entropy_sums.append(entropy)
                else:
                    counts[layer] += layer_counts
                    entropy_sums[layer] += entropy
    fair_share = tokens * top_k / experts
    return {
        "tokens": tokens,
        "experts": experts,
        "top_k": top_k,
        "layers": [
            _layer_report(index, layer_counts, fair_share, entropy_sum / max(tokens, 1), experts)
            for index, (layer_counts, entropy_sum) in enumerate(zip(counts, entropy_sums, strict=True))
        ],
    }


def _layer_report(index: int, counts: Any, fair_share: float, mean_entropy: float, experts: int) -> dict[str, Any]:
    loads = [int(c) for c in counts]
    total = sum(loads)
    shares = [load / total for load in loads if load]
    load_entropy = -sum(p * math.log(p) for p in shares)
    utilisation = [round(load / fair_share, 3) for load in loads]
    return {
        "layer": index,
        "load": loads,
        "utilisation": utilisation,
        "max_utilisation": max(utilisation),
        "idle_experts": loads.count(0),
        "load_entropy": round(load_entropy / math.log(experts), 4),
        "mean_router_entropy": round(mean_entropy / math.log(experts), 4),
    }
