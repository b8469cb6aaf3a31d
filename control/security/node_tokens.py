"""Node tokens: ``mrg_node_<node id>_<secret>``, a token kind of its own.

An inference node presents one to register and heartbeat. It is not an API key: it names
a node, not a tenant or an operator, so the API-key middleware never sees it and an API
key can never pass for a node (nor the reverse). Hashing as for API keys (SHA-256 of the
whole 256-bit token; see ``tokens``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from control.ids import new_id
from control.security.tokens import hash_token, token_matches

PREFIX = "mrg_node_"
_TOKEN_RE = re.compile(r"^mrg_node_(node_[0-9a-z]{26})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class IssuedNodeToken:
    node_id: str
    token: str  # shown once, never stored
    secret_hash: str


def issue_node_token() -> IssuedNodeToken:
    node_id = new_id("node")
    token = f"{PREFIX}{node_id}_{secrets.token_urlsafe(32)}"
    return IssuedNodeToken(node_id=node_id, token=token, secret_hash=hash_token(token))


def parse_node_id(token: str) -> str | None:
    """The node id inside a well-formed node token, else None (no lookup for garbage)."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


__all__ = ["PREFIX", "IssuedNodeToken", "issue_node_token", "parse_node_id", "token_matches"]
