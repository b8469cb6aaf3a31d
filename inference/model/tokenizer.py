"""Byte-level BPE tokenizer trained offline on the shipped corpus."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inference.model.chat_template import (
    CHATML_TEMPLATE,
    END_OF_TEXT,
    IM_END,
    SPECIAL_TOKENS,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def train_tokenizer(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte level: any input encodes (no unknown token), as in GPT-2/Qwen tokenizers.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,  # a chat turn ends generation, as with Qwen instruct models
        pad_token=END_OF_TEXT,
        model_max_length=4096,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
