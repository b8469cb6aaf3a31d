"""A short next-token training run on CPU, so the tiny model's output is corpus-like
words rather than noise. Includes the MoE load-balancing auxiliary loss."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class TrainingResult:
    steps: int
    initial_loss: float  # LM loss on a fixed evaluation batch before training
    final_loss: float  # the same batch after training
    seconds: float
    tokens_seen: int


def token_stream(tokenizer: PreTrainedTokenizerFast, documents: list[str], seed: int) -> list[int]:
    """All documents, shuffled, each followed by <|endoftext|>."""
    order = list(documents)
    random.Random(seed).shuffle(order)
    ids: list[int] = []
    for document in order:
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.pad_token_id)  # <|endoftext|> separates documents
    return ids


def _batch(stream: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    import torch

    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def _lm_loss(model: PreTrainedModel, batch: torch.Tensor) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch, output_router_logits=False).loss)


def train(
    model: PreTrainedModel,
    stream_ids: list[int],
    *,
    steps: int,
    seed: int,
    batch_size: int = 16,
    seq_len: int = 64,
    learning_rate: float = 3e-3,
    max_seconds: float | None = None,
) -> TrainingResult:
    import torch

    generator = torch.Generator().manual_seed(seed)
    stream = torch.tensor(stream_ids, dtype=torch.long)
    high = len(stream_ids) - seq_len - 1
    eval_batch = _batch(stream, torch.randint(0, high, (batch_size,), generator=generator), seq_len)
    model.eval()
    initial = _lm_loss(model, eval_batch)

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    started = time.monotonic()
    done = 0
    for done in range(1, steps + 1):  # noqa: B007 (read after the loop: the steps that ran)
        batch = _batch(stream, torch.randint(0, high, (batch_size,), generator=generator), seq_len)
        # With output_router_logits the returned loss already adds router_aux_loss_coef × aux.
        loss = model(input_ids=batch, labels=batch, output_router_logits=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
    seconds = time.monotonic() - started
    model.eval()
    return TrainingResult(
        steps=done,
        initial_loss=round(initial, 4),
        final_loss=round(_lm_loss(model, eval_batch), 4),
        seconds=round(seconds, 2),
        tokens_seen=done * batch_size * seq_len,
    )
