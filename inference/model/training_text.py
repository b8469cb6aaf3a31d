"""The training text shipped with moorage (written for this project, no downloads).

`servers.txt` and `operations.txt` are plain English; `questions.txt` holds
`question | answer` pairs that become ChatML conversations, so the tiny model learns
the chat template's shape and to end its turn with `<|im_end|>`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from inference.model.chat_template import render_chatml

CORPUS_PACKAGE = "inference.model.corpus"


def corpus_dir() -> Path:
    return Path(str(resources.files(CORPUS_PACKAGE)))


def plain_lines() -> list[str]:
    """Sentences and paragraphs of plain text, one per non-empty line."""
    lines: list[str] = []
    for name in ("servers.txt", "operations.txt"):
        text = (corpus_dir() / name).read_text(encoding="utf-8")
        lines.extend(line.strip() for line in text.splitlines() if line.strip())
    return lines


def question_answers() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for line in (corpus_dir() / "questions.txt").read_text(encoding="utf-8").splitlines():
        if "|" in line:
            question, answer = line.split("|", 1)
            pairs.append((question.strip(), answer.strip()))
    return pairs


def training_documents() -> list[str]:
    """Every document the tokenizer and the model are trained on."""
    chats = [render_chatml([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in question_answers()]
    return plain_lines() + chats
