"""Per-tenant inference limits: requests per minute, tokens per minute, and a token
budget per calendar period (UTC day or month). Platform defaults come from Settings;
operators override them per tenant. Overrides are cached per process for ``cache_ttl``
seconds and dropped from the cache as soon as this process changes them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from control.domain.errors import Invalid, NotFound
from control.domain.records import InferenceOverrides
from control.store.database import Store
from control.store.repositories.inference_limits import InferenceLimitsRepository
from control.store.repositories.tenants import TenantRepository

PERIODS = ("day", "month")
MAX_LIMIT = 10**12


@dataclass(frozen=True, slots=True)
class InferenceLimits:
    requests_per_minute: int
    tokens_per_minute: int
    token_budget: int
    budget_period: str  # day | month

    def with_overrides(self, overrides: InferenceOverrides) -> InferenceLimits:
        return InferenceLimits(
            overrides.requests_per_minute or self.requests_per_minute,
            overrides.tokens_per_minute or self.tokens_per_minute,
            overrides.token_budget or self.token_budget,
            overrides.budget_period or self.budget_period,
        )


def check_overrides(overrides: InferenceOverrides) -> None:
    errors = [
        {"field": name, "message": f"1..{MAX_LIMIT} or null"}
        for name in ("requests_per_minute", "tokens_per_minute", "token_budget")
        if (value := getattr(overrides, name)) is not None and not 1 <= value <= MAX_LIMIT
    ]
    if overrides.budget_period is not None and overrides.budget_period not in PERIODS:
        errors.append({"field": "budget_period", "message": "day, month or null"})
    if errors:
        fields = ", ".join(e["field"] for e in errors)
        raise Invalid(f"Invalid inference limits ({fields}); null means the platform default.", errors=errors)


class InferenceLimitsService:
    def __init__(
        self, db: Store, defaults: InferenceLimits, *, cache_ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.defaults = defaults
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, InferenceLimits]] = {}

    def overrides(self, tenant_id: str) -> InferenceOverrides:
        with self.db.read() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            return InferenceLimitsRepository(session).get(tenant_id)

    def set(self, tenant_id: str, overrides: InferenceOverrides) -> InferenceOverrides:
        check_overrides(overrides)
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            InferenceLimitsRepository(session).put(tenant_id, overrides)
        self._cache.pop(tenant_id, None)
        return overrides

    def effective(self, tenant_id: str) -> InferenceLimits:
        """The tenant's limits (blocking on a cache miss)."""
        hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        with self.db.read() as session:
            limits = self.defaults.with_overrides(InferenceLimitsRepository(session).get(tenant_id))
        self._cache[tenant_id] = (self._clock() + self.cache_ttl, limits)
        return limits
