"""Moving-window rate limiter, in memory, per process.

Each bucket keeps the times of the requests it admitted during the last ``window``
seconds; a request is admitted only if *every* policy that applies to it has room, and
then it is counted in all of them at once, so a request refused by one policy consumes
nothing from the others. That makes the guarantee exact: no interval of ``window``
seconds ever holds more than ``quota`` admissions (a token bucket can admit up to twice
its quota across a window boundary).

Memory is one float per admitted request still in its window (at most ``quota`` per
bucket: refusals count nothing), and only buckets that admitted something are kept: a
``peek`` or a refusal stores nothing. Every ``_SWEEP_EVERY`` admissions, buckets whose
newest entry has left its window are dropped, so the buckets held are those active in
the last window plus at most ``_SWEEP_EVERY`` admissions' worth of idle ones.

The state lives in this process: with several control-plane processes each enforces
its own budget (the single-process SQLite deployment is the supported one). The clock is
injectable so tests can drive time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]
_SWEEP_EVERY = 1024  # acquisitions between sweeps of idle buckets


@dataclass(frozen=True, slots=True)
class Policy:
    name: str  # what the client sees: "key" or "tenant"
    bucket: str  # what is counted: e.g. "key:key_01..." or "tenant:ten_01..."
    quota: int
    window: float  # seconds

    def __post_init__(self) -> None:
        if self.quota < 1 or self.window <= 0:
            raise ValueError("a rate-limit policy needs quota >= 1 and window > 0")


@dataclass(frozen=True, slots=True)
class PolicyState:
    policy: Policy
    remaining: int
    reset: float  # seconds until the oldest counted request leaves the window (0: none counted)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    states: tuple[PolicyState, ...]
    retry_after: float  # 0 when admitted
    exhausted: tuple[str, ...]  # names of the policies that refused

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_after))


class SlidingWindowLimiter:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock  # public so tests can drive time
        self._lock = threading.Lock()
        self._buckets: dict[str, deque[float]] = {}
        self._windows: dict[str, float] = {}
        self._calls = 0

    def acquire(self, policies: Sequence[Policy]) -> Decision:
        return self._decide(policies, count=True)

    def peek(self, policies: Sequence[Policy]) -> Decision:
        """Would ``acquire`` admit now? Counts nothing."""
        return self._decide(policies, count=False)

    def _decide(self, policies: Sequence[Policy], *, count: bool) -> Decision:
        with self._lock:
            now = self.clock()
            logs = [(policy, self._log(policy, now)) for policy in policies]
            exhausted = [(p, log) for p, log in logs if len(log) >= p.quota]
            if exhausted:
                # Room returns once enough entries age out to bring the count below the quota.
                waits = [log[len(log) - p.quota] + p.window - now for p, log in exhausted]
                states = tuple(self._state(p, log, now) for p, log in logs)
                return Decision(False, states, max(waits), tuple(p.name for p, _ in exhausted))
            if count:
                for policy, log in logs:
                    self._buckets.setdefault(policy.bucket, log).append(now)
                    self._windows[policy.bucket] = policy.window
                logs = [(p, self._buckets[p.bucket]) for p in policies]  # two policies may count one bucket
                self._maybe_sweep(now)
            states = tuple(self._state(p, log, now) for p, log in logs)
            return Decision(True, states, 0.0, ())

    def _log(self, policy: Policy, now: float) -> deque[float]:
        log = self._buckets.get(policy.bucket)
        if log is None:
            return deque()  # stored only once something is counted in it
        while log and now - log[0] >= policy.window:
            log.popleft()
        return log

    @staticmethod
    def _state(policy: Policy, log: deque[float], now: float) -> PolicyState:
        reset = log[0] + policy.window - now if log else 0.0
        return PolicyState(policy, max(0, policy.quota - len(log)), max(0.0, reset))

    def _maybe_sweep(self, now: float) -> None:
        # Buckets of keys that stopped calling would otherwise stay forever.
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        for bucket, log in list(self._buckets.items()):
            if not log or now - log[-1] >= self._windows[bucket]:  # a peek may have emptied it
                del self._buckets[bucket]
                del self._windows[bucket]

    def footprint(self) -> tuple[int, int]:
        """(buckets, timestamps) held now: what the memory bound is about."""
        with self._lock:
            return len(self._buckets), sum(len(log) for log in self._buckets.values())
