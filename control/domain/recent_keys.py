"""API keys that authenticated a moment ago, remembered per database handle, so that most
requests authenticate without the database (and without the worker thread a database
read needs): on a busy server that lookup was the largest cost of a cheap request.

What is trusted, and for how long:

- only successful authentications are remembered, and the token's secret is still
  checked against the stored hash on every request;
- an entry is used for ``ttl_s`` after the key and its tenant were read (1 s): a change
  made by another process on the same database (a second server) applies within that;
- a change made through this process applies at once: revoking a key, suspending or
  deleting a tenant drop what they concern (``forget_key``, ``forget_tenant``), and an
  authentication that read the database before such a change is not remembered;
- an entry whose key has expired since, or whose ``last_used_at`` is due for its write,
  is not used: the caller authenticates through the database as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from weakref import WeakKeyDictionary

from control.security.principal import Principal
from control.security.tokens import parse_key_id, token_matches
from control.store.database import Store

TTL_S = 1.0
MAX_ENTRIES = 10_000  # keys remembered per process; past that the oldest half is dropped


@dataclass(frozen=True, slots=True)
class Known:
    principal: Principal
    secret_hash: str
    expires_at: datetime | None
    used_at: datetime | None  # last_used_at as stored once this authentication is done
    read_at: float  # clock() when the key and tenant were read


class RecentKeys:
    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, Known] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every forget: reads older than that are not remembered

    def principal(self, token: str, now: datetime, touch_every: timedelta) -> Principal | None:
        """The caller behind ``token`` if it authenticated a moment ago and nothing about it
        needs the database now; None otherwise (authenticate through the database)."""
        key_id = parse_key_id(token)
        known = self._entries.get(key_id) if key_id else None
        if known is None or self._clock() - known.read_at >= self.ttl_s:
            return None
        if not token_matches(token, known.secret_hash):
            return None
        if known.expires_at is not None and known.expires_at <= now:
            return None
        if known.used_at is None or now - known.used_at >= touch_every:
            return None
        return known.principal

    def read_at(self) -> tuple[int, float]:
        """Call before reading the key: (generation, clock) to pass to ``remember``."""
        return self.generation, self._clock()

    def remember(
        self,
        started: tuple[int, float],
        principal: Principal,
        secret_hash: str,
        expires_at: datetime | None,
        used_at: datetime | None,
    ) -> None:
        generation, read_at = started
        with self._lock:
            if generation != self.generation:  # revoked or suspended while we were reading
                return
            if len(self._entries) >= MAX_ENTRIES:
                for stale in list(self._entries)[: MAX_ENTRIES // 2]:
                    del self._entries[stale]
            self._entries[principal.key_id] = Known(principal, secret_hash, expires_at, used_at, read_at)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            self._entries.pop(key_id, None)

    def forget_tenant(self, tenant_id: str) -> None:
        with self._lock:
            self.generation += 1
            for key_id in [k for k, v in self._entries.items() if v.principal.tenant_id == tenant_id]:
                del self._entries[key_id]


_BY_STORE: WeakKeyDictionary[Store, RecentKeys] = WeakKeyDictionary()
_BY_STORE_LOCK = threading.Lock()


def recent_keys(db: Store) -> RecentKeys:
    """The one memory of a database handle: every service built on it shares it, so the
    tenant service's suspension reaches the key service's entries."""
    with _BY_STORE_LOCK:
        recent = _BY_STORE.get(db)
        if recent is None:
            recent = _BY_STORE[db] = RecentKeys()
        return recent
