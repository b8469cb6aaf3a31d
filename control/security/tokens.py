"""Bearer tokens: ``<prefix><id>_<secret>``, e.g. API keys ``mrg_live_key_..._...``.

The id is public (it names the key or node in listings and audit lines); the secret is
256 random bits. Only SHA-256 of the whole token is stored: for a token of that entropy a
plain hash is as strong as a slow KDF and costs microseconds per request. It is not
keyed with the secrets master key, so rotating that key never invalidates tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from control.ids import new_id


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    token: str  # shown once, never stored
    secret_hash: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), secret_hash)


@dataclass(frozen=True)
class TokenKind:
    """One kind of token; kinds differ in prefix so one can never pass for another."""

    prefix: str  # "mrg_live_"
    id_prefix: str  # "key": ids look like key_01...
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pattern = rf"^{re.escape(self.prefix)}({self.id_prefix}_[0-9a-z]{{26}})_([A-Za-z0-9_-]{{43}})$"
        object.__setattr__(self, "_pattern", re.compile(pattern))

    def issue(self) -> IssuedToken:
        token_id = new_id(self.id_prefix)
        token = f"{self.prefix}{token_id}_{secrets.token_urlsafe(32)}"
        return IssuedToken(id=token_id, token=token, secret_hash=hash_token(token))

    def parse_id(self, token: str) -> str | None:
        """The id inside a well-formed token, else None (no lookup for garbage)."""
        match = self._pattern.fullmatch(token)
        return match.group(1) if match else None


API_KEY = TokenKind("mrg_live_", "key")
PREFIX = API_KEY.prefix
issue_token = API_KEY.issue
parse_key_id = API_KEY.parse_id

# Operators hand these to people who may register a tenant themselves (POST /v1/register).
REGISTRATION_TOKEN = TokenKind("mrg_reg_", "rtk")

RECOVERY_CODE_PREFIX = "mrg_rec_"


def issue_recovery_code() -> tuple[str, str]:
    """(code, its hash): a tenant's recovery code carries no id, the request names the tenant."""
    code = f"{RECOVERY_CODE_PREFIX}{secrets.token_urlsafe(32)}"
    return code, hash_token(code)
