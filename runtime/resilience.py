"""The one circuit breaker + retry mechanism for moorage (runtime adapters and control plane).

- `CircuitBreaker`: closed -> open after `failure_threshold` consecutive dependency failures;
  open calls fail fast with `CircuitOpenError.retry_after`; after `reset_timeout` one trial
  call is let through (half-open): success closes, failure reopens. Thread-safe; sync
  (`call`) and async (`acall`); injectable clock.
- `BreakerRegistry` / `default_registry`: every breaker's name + state, for /readyz and metrics.
- `RetryPolicy`: tenacity exponential backoff + jitter, applied only to errors that are safe to
  retry (see `safe_to_retry`).
- `Guard` + `@guarded(idempotent=...)`: breaker + retry in one line per adapter method.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import tenacity

from runtime.failures import (  # re-exported: one import site for callers
    RETRYABLE_STATUS,
    CircuitOpenError,
    is_connect_failure,
    is_dependency_failure,
    is_transport_failure,
    safe_to_retry,
    status_code_of,
)

__all__ = [
    "NO_RETRY",
    "RETRYABLE_STATUS",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Guard",
    "RetryPolicy",
    "default_registry",
    "guarded",
    "is_connect_failure",
    "is_dependency_failure",
    "is_transport_failure",
    "safe_to_retry",
    "status_code_of",
]


P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# --- breaker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerSnapshot:
    name: str
    state: BreakerState
    consecutive_failures: int
    failure_threshold: int
    reset_timeout: float
    retry_after: float  # seconds until a trial call is allowed (0 unless open)
    opened_total: int  # times it has opened since start (a Prometheus counter)


StateListener = Callable[[str, BreakerState, BreakerState], None]


class BreakerRegistry:
    """Names -> breakers, so /readyz and /metrics can list every dependency's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[StateListener] = []

    def register(self, breaker: CircuitBreaker) -> None:
        with self._lock:  # the latest breaker with a name wins (e.g. a recreated client)
            self._breakers[breaker.name] = breaker

    def get(self, name: str) -> CircuitBreaker | None:
        with self._lock:
            return self._breakers.get(name)

    def snapshot(self) -> list[BreakerSnapshot]:
        with self._lock:
            breakers = list(self._breakers.values())
        return sorted((b.snapshot() for b in breakers), key=lambda s: s.name)

    def add_listener(self, listener: StateListener) -> None:
        """`listener(name, old, new)` on every state change (metrics, logs)."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, name: str, old: BreakerState, new: BreakerState) -> None:
        for listener in list(self._listeners):
            listener(name, old, new)


default_registry = BreakerRegistry()


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Exception),
        clock: Clock = time.monotonic,
        registry: BreakerRegistry | None = default_registry,
    ) -> None:
        if failure_threshold < 1 or reset_timeout < 0 or half_open_max_calls < 1:
            raise ValueError("failure_threshold >= 1, reset_timeout >= 0, half_open_max_calls >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.is_failure = is_failure
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._opened_total = 0
        self._trials = 0  # half-open calls in flight
        self._registry = registry
        if registry is not None:
            registry.register(self)

    # state transitions; callers hold self._lock and notify after releasing it
    def _current(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._state, self._trials = BreakerState.HALF_OPEN, 0
        return self._state

    def _set(self, new: BreakerState) -> tuple[BreakerState, BreakerState] | None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            self._opened_at, self._opened_total, self._trials = self._clock(), self._opened_total + 1, 0
        return (old, new) if old is not new else None

    def _notify(self, change: tuple[BreakerState, BreakerState] | None) -> None:
        if change and self._registry is not None:
            self._registry._notify(self.name, *change)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            before = self._state
            now = self._current()
        self._notify((before, now) if before is not now else None)
        return now

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            state = self._current()
            retry_after = self._opened_at + self.reset_timeout - self._clock() if state is BreakerState.OPEN else 0.0
            return BreakerSnapshot(
                self.name,
                state,
                self._failures,
                self.failure_threshold,
                self.reset_timeout,
                max(0.0, retry_after),
                self._opened_total,
            )

    def before_call(self) -> None:
        """Admit a call or raise `CircuitOpenError`. Pair with `record_success`/`record_failure`
        (or `release` when the outcome says nothing about the dependency, e.g. cancellation)."""
        with self._lock:
            before = self._state
            state = self._current()
            if state is BreakerState.OPEN:
                retry_after = self._opened_at + self.reset_timeout - self._clock()
            elif state is BreakerState.HALF_OPEN and self._trials >= self.half_open_max_calls:
                retry_after = min(1.0, self.reset_timeout)  # a trial call is in flight
            else:
                if state is BreakerState.HALF_OPEN:
                    self._trials += 1
                retry_after = -1.0
        self._notify((before, state) if before is not state else None)
        if retry_after >= 0:
            raise CircuitOpenError(self.name, retry_after)

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trials = max(0, self._trials - 1)
            change = self._set(BreakerState.CLOSED) if self._state is not BreakerState.CLOSED else None
        self._notify(change)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trials = max(0, self._trials - 1)
            change = None
            if self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
            ):
                change = self._set(BreakerState.OPEN)
        self._notify(change)

    def release(self) -> None:
        with self._lock:
            self._trials = max(0, self._trials - 1)

    def reset(self) -> None:
        with self._lock:
            self._failures = 0
            change = self._set(BreakerState.CLOSED)
        self._notify(change)

    def _outcome(self, exc: BaseException | None, is_failure: Callable[[BaseException], bool]) -> None:
        if exc is None:
            self.record_success()
        elif not isinstance(exc, Exception):
            self.release()  # cancelled/interrupted: no verdict on the dependency
        elif is_failure(exc):
            self.record_failure()
        else:
            self.record_success()  # the dependency answered (e.g. 404): it is up

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._call(fn, self.is_failure, *args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._acall(fn, self.is_failure, *args, **kwargs)

    def _call(self, fn: Callable[..., T], is_failure: Callable[[BaseException], bool], /, *args: Any, **kwargs: Any) -> T:
        self.before_call()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._outcome(exc, is_failure)
            raise
        self._outcome(None, is_failure)
        return result

    async def _acall(
        self, fn: Callable[..., Awaitable[T]], is_failure: Callable[[BaseException], bool], /, *args: Any, **kwargs: Any
    ) -> T:
        self.before_call()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._outcome(exc, is_failure)
            raise
        self._outcome(None, is_failure)
        return result


# --- retry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    jitter: float = 0.05
    is_retryable: Callable[[BaseException, bool], bool] = safe_to_retry
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def _kwargs(self, idempotent: bool) -> dict[str, Any]:
        return dict(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.initial_backoff, max=self.max_backoff)
            + tenacity.wait_random(0, self.jitter),
            retry=tenacity.retry_if_exception(lambda e: self.is_retryable(e, idempotent)),
            reraise=True,
        )

    def call(self, fn: Callable[..., T], /, *args: Any, idempotent: bool, **kwargs: Any) -> T:
        return tenacity.Retrying(sleep=self.sleep, **self._kwargs(idempotent))(fn, *args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, idempotent: bool, **kwargs: Any) -> T:
        retrying = tenacity.AsyncRetrying(**self._kwargs(idempotent))
        return await retrying(fn, *args, **kwargs)


NO_RETRY = RetryPolicy(attempts=1)


class Guard:
    """The seam every adapter call goes through: breaker outside, retries inside, so an open
    breaker fails fast and one logical call counts once toward the threshold."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        retry: RetryPolicy = RetryPolicy(),
        is_failure: Callable[[BaseException, bool], bool] = is_dependency_failure,
    ) -> None:
        self.breaker = breaker
        self.retry = retry
        self.is_failure = is_failure

    def call(self, fn: Callable[..., T], /, *args: Any, idempotent: bool = False, **kwargs: Any) -> T:
        # mypy cannot solve T through the generic retry.call handed over as a callable.
        result: T = self.breaker._call(
            self.retry.call, lambda e: self.is_failure(e, idempotent), fn, *args, idempotent=idempotent, **kwargs
        )
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, idempotent: bool = False, **kwargs: Any) -> T:
        return await self.breaker._acall(
            self.retry.acall, lambda e: self.is_failure(e, idempotent), fn, *args, idempotent=idempotent, **kwargs
        )


def guarded(*, idempotent: bool, attr: str = "guard") -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Method decorator: run through `self.<attr>` (a `Guard`). Works on sync and async methods.
    `idempotent=True` for reads and full replaces (safe to retry on resets/5xx)."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                return await getattr(self, attr).acall(fn, self, *args, idempotent=idempotent, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, attr).call(fn, self, *args, idempotent=idempotent, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
