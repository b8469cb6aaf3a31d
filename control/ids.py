"""Server-generated ids: a type prefix and a time-ordered random part (``app_01j...``).

Time order makes keyset pagination by id match creation order.
"""

from __future__ import annotations

import secrets
import time

from control.domain.names import RESOURCE_ID

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    randomness = secrets.randbits(80)
    return f"{prefix}_{_encode((millis << 80) | randomness, 26)}"


def looks_like_id(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and RESOURCE_ID.accepts(value)
