"""Inference admission: per-tenant requests/min, tokens/min and a token budget per period.

Counting tokens after a response lets a tenant overshoot by a whole request (or by every
request in flight), so admission *reserves* ``prompt estimate + max_tokens`` and the end
of the request *settles* the reservation with the engine's reported usage:

- requests/min and tokens/min are moving 60 s windows in memory (the reservation's entry
  shrinks to the actual count at settlement);
- the budget is the period's settled tokens (read from the usage table once per period,
  then kept current by settlements) plus every reservation still open.

Settlement writes the usage row and updates the counters under the tenant's lock, so a
reload of the period total sees each request exactly once. State is per process, like
the API rate limiter (the single-process deployment is the supported one).

Memory: per tenant, at most ``requests_per_minute`` floats and entries (refusals count
nothing). Every ``_SWEEP_EVERY`` reservations, tenants idle for a whole window with nothing
outstanding are dropped (their period total is read again on their next request), so a
tenant that stopped calling, or was deleted, holds nothing.

Prompt estimate (documented in the API): one token per 3 characters of message text,
rounded up, plus 8 per chat message for the template. Byte-level BPE tokenizers average
3-4 characters per English token, so this leans high; settlement corrects it either way.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control.clock import utcnow
from control.domain.inference_limits import InferenceLimits, InferenceLimitsService
from control.domain.records import UsageRecord
from control.domain.usage import UsageService

WINDOW_S = 60.0
_SWEEP_EVERY = 1024  # reservations between sweeps of idle tenants
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8


class QuotaExceeded(Exception):
    def __init__(self, code: str, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after_s = max(1.0, retry_after_s)


@dataclass
class _Entry:
    at: float
    tokens: int


@dataclass(frozen=True)
class Reservation:
    tenant_id: str
    tokens: int
    entry: _Entry


@dataclass
class _TenantState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_Entry] = field(default_factory=deque)
    period_start: datetime | None = None
    period_used: int = 0  # settled tokens in the current period
    outstanding: int = 0  # reserved, not yet settled
    dropped: bool = False  # swept while idle: a reservation that raced the sweep looks again


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):  # content parts, or a list of prompts / token ids
        return sum(_text_length(v) if not isinstance(v, int) else CHARS_PER_TOKEN for v in value)
    if isinstance(value, dict):
        return _text_length(value.get("text") or value.get("content") or "")
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_length(m.get("content")) if isinstance(m, dict) else 0 for m in messages)
        overhead = TOKENS_PER_MESSAGE * len(messages)
    else:
        chars, overhead = _text_length(body.get("prompt")), 0
    return math.ceil(chars / CHARS_PER_TOKEN) + overhead


def period_bounds(now: datetime, period: str) -> tuple[datetime, datetime]:
    """[start, end) of the UTC calendar day or month holding ``now``."""
    if period == "day":
        start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return start, datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


class InferenceQuota:
    def __init__(
        self,
        limits: InferenceLimitsService,
        usage: UsageService,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.limits = limits
        self.usage = usage
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantState] = {}
        self._reservations = 0

    def reserve(self, tenant_id: str, tokens: int) -> Reservation:
        """Admit a request reserving ``tokens``, or raise QuotaExceeded (nothing counted). Blocking."""
        limits = self.limits.effective(tenant_id)
        try:
            while True:
                state = self._state(tenant_id)
                with state.lock:
                    if not state.dropped:
                        return self._reserve(state, tenant_id, tokens, limits)
        finally:
            self._maybe_sweep()

    def _reserve(self, state: _TenantState, tenant_id: str, tokens: int, limits: InferenceLimits) -> Reservation:
        """``reserve`` for one tenant, under its lock."""
        now = self._clock()
        self._prune(state, now)
        start, end = period_bounds(self._now(), limits.budget_period)
        if state.period_start != start:
            state.period_used = self.usage.tokens_since(tenant_id, start)
            state.period_start = start
        if len(state.requests) >= limits.requests_per_minute:
            raise QuotaExceeded(
                "inference-rate-limited",
                f"The tenant's limit of {limits.requests_per_minute} inference requests per minute is reached. "
                "Retry after Retry-After seconds; an operator can raise it.",
                state.requests[0] + WINDOW_S - now,
            )
        self._check_tokens_per_minute(state, tokens, limits.tokens_per_minute, now)
        if state.period_used + state.outstanding + tokens > limits.token_budget:
            left = max(0, limits.token_budget - state.period_used - state.outstanding)
            raise QuotaExceeded(
                "inference-quota-exceeded",
                f"The tenant's token budget for this {limits.budget_period} ({limits.token_budget} tokens) cannot "
                f"cover this request: it reserves {tokens} tokens (prompt estimate + max_tokens) and {left} are "
                f"left. Lower max_tokens, wait for the next {limits.budget_period} (Retry-After), or ask an operator.",
                (end - self._now()).total_seconds(),
            )
        entry = _Entry(now, tokens)
        state.requests.append(now)
        state.tokens.append(entry)
        state.outstanding += tokens
        return Reservation(tenant_id, tokens, entry)

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        """Write the usage row and replace the reservation by what was used. Blocking."""
        state = self._state(reservation.tenant_id)
        with state.lock:
            self.usage.record(record)
            reservation.entry.tokens = record.total_tokens
            state.outstanding -= reservation.tokens
            if state.period_start is not None and record.created_at >= state.period_start:
                state.period_used += record.total_tokens

    def _check_tokens_per_minute(self, state: _TenantState, tokens: int, limit: int, now: float) -> None:
        if tokens > limit:
            raise QuotaExceeded(
                "inference-rate-limited",
                f"This request alone reserves {tokens} tokens (prompt estimate + max_tokens), more than the tenant's "
                f"{limit} tokens per minute. Lower max_tokens or shorten the prompt.",
                WINDOW_S,
            )
        used = sum(e.tokens for e in state.tokens)
        if used + tokens <= limit:
            return
        retry_after = WINDOW_S
        for entry in state.tokens:  # oldest first: when will enough have left the window?
            used -= entry.tokens
            if used + tokens <= limit:
                retry_after = entry.at + WINDOW_S - now
                break
        raise QuotaExceeded(
            "inference-rate-limited",
            f"The tenant's limit of {limit} tokens per minute is reached (requests reserve prompt estimate + "
            "max_tokens until they end). Retry after Retry-After seconds.",
            retry_after,
        )

    def _state(self, tenant_id: str) -> _TenantState:
        with self._lock:
            return self._tenants.setdefault(tenant_id, _TenantState())

    def _maybe_sweep(self) -> None:
        # Tenants that stopped calling (or were deleted) would otherwise stay forever.
        with self._lock:
            self._reservations += 1
            if self._reservations % _SWEEP_EVERY:
                return
            now = self._clock()
            for tenant_id, state in list(self._tenants.items()):
                if not state.lock.acquire(blocking=False):
                    continue  # in use this moment: not idle
                try:
                    self._prune(state, now)
                    # One token entry per request, pruned alike: no requests means no entries.
                    if not state.requests and not state.outstanding:
                        state.dropped = True
                        del self._tenants[tenant_id]
                finally:
                    state.lock.release()

    def footprint(self) -> tuple[int, int]:
        """(tenants, window entries) held now: what the memory bound is about."""
        with self._lock:
            return len(self._tenants), sum(len(s.requests) + len(s.tokens) for s in self._tenants.values())

    @staticmethod
    def _prune(state: _TenantState, now: float) -> None:
        while state.requests and state.requests[0] <= now - WINDOW_S:
            state.requests.popleft()
        while state.tokens and state.tokens[0].at <= now - WINDOW_S:
            state.tokens.popleft()
