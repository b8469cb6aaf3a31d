"""Per-app locks in this process: a swap and a reconcile pass never act on one app at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class AppLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, app_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(app_id, threading.Lock())

    @contextmanager
    def hold(self, app_id: str) -> Iterator[None]:
        with self._lock(app_id):
            yield

    @contextmanager
    def try_hold(self, app_id: str) -> Iterator[bool]:
        lock = self._lock(app_id)
        acquired = lock.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
