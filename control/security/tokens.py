"""API key tokens: ``mrg_live_<id>_<secret>``.

The id is public (it names the key in listings and audit lines); the secret is 256
random bits. Only SHA-256 of the whole token is stored: for a token of that entropy a
plain hash is as strong as a slow KDF and costs microseconds per request. It is not
keyed with the secrets master key, so rotating that key never invalidates API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from control.ids import new_id

PREFIX = "mrg_live_"
_TOKEN_RE = re.compile(r"^mrg_live_(key_[0-9a-z]{26})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    key_id: str
    token: str  # shown once, never stored
    secret_hash: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token() -> IssuedToken:
    key_id = new_id("key")
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedToken(key_id=key_id, token=token, secret_hash=hash_token(token))


def parse_key_id(token: str) -> str | None:
    """The key id inside a well-formed token, else None (no lookup for garbage)."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def token_matches(token: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), secret_hash)
