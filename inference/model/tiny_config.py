"""Shape of the tiny Qwen3-MoE: small enough to train on two CPU cores in a minute, with
the same structure (every layer sparse, top-k routing) as the real Qwen3-30B-A3B."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Qwen3MoeConfig


@dataclass(frozen=True)
class TinyMoeShape:
    experts: int = 16
    top_k: int = 4
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 1024
    max_positions: int = 2048

    def validate(self) -> None:
        # The brief for the tiny model: a real MoE, not a dense model in disguise.
        if self.experts < 8 or not 2 <= self.top_k <= self.experts:
            raise ValueError("need at least 8 experts and 2 <= top_k <= experts")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must divide by heads, and heads by kv_heads")

    def to_config(self, **token_ids: Any) -> Qwen3MoeConfig:
        from transformers import Qwen3MoeConfig

        self.validate()
        return Qwen3MoeConfig(  # type: ignore[call-arg]  # head_dim is accepted via **kwargs
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.hidden * 2,  # unused: every layer is sparse
            moe_intermediate_size=self.hidden // 2,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.hidden // self.heads,
            num_experts=self.experts,
            num_experts_per_tok=self.top_k,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,  # as Qwen3-30B-A3B
            max_position_embeddings=self.max_positions,
            tie_word_embeddings=False,
            router_aux_loss_coef=0.01,
            **token_ids,
        )
