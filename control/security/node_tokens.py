"""Node tokens: ``mrg_node_<node id>_<secret>``, a token kind of its own.

An inference node presents one to register and heartbeat. It is not an API key: it names
a node, not a tenant or an operator, so the API-key middleware never sees it and an API
key can never pass for a node (nor the reverse). Hashing as for API keys (SHA-256 of the
whole 256-bit token; see ``tokens``).
"""

from __future__ import annotations

from control.security.tokens import IssuedToken, TokenKind, token_matches

NODE_TOKEN = TokenKind("mrg_node_", "node")
PREFIX = NODE_TOKEN.prefix
issue_node_token = NODE_TOKEN.issue
parse_node_id = NODE_TOKEN.parse_id

__all__ = ["PREFIX", "IssuedToken", "issue_node_token", "parse_node_id", "token_matches"]
