"""HTTP methods that change state: what takes an Idempotency-Key, is audited, and is
retried by the CLI only with a key. One definition for the server and the client."""

from __future__ import annotations

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
