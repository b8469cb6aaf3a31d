"""Output: ``--json`` prints the API's JSON unchanged (stable shapes; ``json.dumps``
escapes control characters); otherwise a compact table for people, with server text made
terminal-safe. Long text is bounded so an agent's context is not flooded."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from control.cli.client.terminal import terminal_safe

MAX_CELL = 60


def _cell(value: Any) -> str:
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)
    text = terminal_safe(text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(data: Any, *, as_json: bool, columns: Sequence[str] = (), stream: Any = None) -> None:
    out = stream or sys.stdout
    if as_json:
        print(json.dumps(data, default=str), file=out)
    elif isinstance(data, list):
        print(table(data, columns) if data else "(none)", file=out)
    elif isinstance(data, dict):
        width = max((len(terminal_safe(k)) for k in data), default=0)
        for key, value in data.items():
            print(f"{terminal_safe(key).ljust(width)}  {_cell(value)}", file=out)
    elif data is not None:
        print(terminal_safe(str(data)), file=out)
