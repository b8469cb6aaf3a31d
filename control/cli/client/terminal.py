"""Text from the server, made safe to print on a terminal.

Build and runtime logs are the tenant's program output, and much else the CLI prints
(names, reasons, error details, model output) passes through the server from someone
else. Written raw, an escape sequence in it is a command to the reader's terminal: OSC
sets the window title or clipboard or plants a hyperlink, CSI clears the screen or moves
the cursor to overwrite earlier lines, and a lone C1 byte (``\\x9b`` is CSI on many
terminals) does the same without an ESC. So everything printed as text goes through
``terminal_safe``: colour (SGR) sequences are dropped, and every other C0 control but
``\\n`` and ``\\t``, DEL and every C1 control is shown as a visible ``\\xNN`` escape, so
what was attempted stays readable and nothing reaches the terminal as a control.
``--json`` output needs none of this: ``json.dumps`` escapes every control character
(``\\u001b``), and the data stays exactly what the server sent.
"""

from __future__ import annotations

import re

_COLOUR = re.compile(r"\x1b\[[0-9;:]*m")  # SGR only: harmless formatting, common in build output
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _COLOUR.sub("", text))
