"""A deployment's log: one append-only file per deployment under the data dir (the DB row
holds its path). Lines are flushed as they come, so ``logs?follow=true`` sees them live.
Only build output and pipeline messages go here: env values never do."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path


class BuildLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(text.rstrip("\n") + "\n")

    def step(self, text: str) -> None:
        """A pipeline message (as opposed to builder output), timestamped."""
        self.line(f"[moorage {datetime.now(UTC).strftime('%H:%M:%S')}] {text}")


def read_from(path: Path, offset: int) -> tuple[str, int]:
    """Complete lines from ``offset`` on, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return "", offset
    end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
    return data[:end].decode("utf-8", "replace"), offset + end
