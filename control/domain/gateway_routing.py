"""Which node takes a gateway request: healthy nodes serving the model, least requests
in flight first (counted by the gateway itself: engines like `transformers serve` cannot
say), skipping nodes whose circuit breaker is open. Ties are broken at random so equal
nodes share the load.

One breaker per node (``inference-node:<id>``, in the shared registry, so /readyz and
/metrics show it). The gateway records a failure for a connect error, a 5xx or a stream
that breaks; a 4xx is the engine answering, so it counts as a success.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import TypeVar

from runtime.resilience import BreakerRegistry, BreakerSnapshot, BreakerState, CircuitBreaker

BREAKER_PREFIX = "inference-node:"
T = TypeVar("T")


class NodeRouter:
    def __init__(
        self,
        breakers: BreakerRegistry,
        *,
        failure_threshold: int,
        reset_timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = breakers
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: Counter[str] = Counter()

    def breaker(self, node_id: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(node_id)
            if breaker is None:
                breaker = self._breakers[node_id] = CircuitBreaker(
                    BREAKER_PREFIX + node_id,
                    failure_threshold=self.failure_threshold,
                    reset_timeout=self.reset_timeout_s,
                    registry=self.registry,
                )
            return breaker

    def breaker_state(self, node_id: str) -> str:
        snapshot = self.breaker_snapshot(node_id)
        return BreakerState.CLOSED.value if snapshot is None else snapshot.state.value

    def breaker_snapshot(self, node_id: str) -> BreakerSnapshot | None:
        """None: no request has gone to the node yet (its breaker is created on first use)."""
        with self._lock:
            breaker = self._breakers.get(node_id)
        return None if breaker is None else breaker.snapshot()

    def order(self, candidates: list[tuple[str, T]]) -> list[tuple[str, T]]:
        """(node id, anything) pairs in the order to try them; open breakers left out."""
        usable = [c for c in candidates if self.breaker(c[0]).state is not BreakerState.OPEN]
        with self._lock:
            keyed = [(self._in_flight[node_id], self._rng.random(), node_id, item) for node_id, item in usable]
        return [(node_id, item) for _, _, node_id, item in sorted(keyed, key=lambda k: (k[0], k[1]))]

    def retry_after(self, node_ids: list[str]) -> float:
        """Seconds until one of these nodes may take a request again (for Retry-After)."""
        waits = [self.breaker(n).snapshot().retry_after for n in node_ids]
        return max(1.0, min(waits, default=1.0))

    def begin(self, node_id: str) -> None:
        with self._lock:
            self._in_flight[node_id] += 1

    def end(self, node_id: str) -> None:
        with self._lock:
            self._in_flight[node_id] -= 1
            if self._in_flight[node_id] <= 0:
                del self._in_flight[node_id]

    def in_flight(self, node_id: str) -> int:
        with self._lock:
            return self._in_flight[node_id]
