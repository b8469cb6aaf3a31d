"""Rate-limit policies: platform defaults, per-tenant overrides set by operators.

Every API key is limited on its own (``key``); a tenant key is also limited by its
tenant's total (``tenant``). Operator keys have no tenant, so only ``key`` applies.
Overrides are cached per process for ``cache_ttl`` seconds and dropped from the cache as
soon as this process changes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from control.domain.errors import Invalid, NotFound
from control.domain.records import LimitOverrides
from control.security.principal import Principal
from control.security.rate_limit import Policy
from control.store.database import Store
from control.store.repositories.limits import TenantLimitsRepository
from control.store.repositories.tenants import TenantRepository

MAX_QUOTA = 1_000_000


@dataclass(frozen=True, slots=True)
class Defaults:
    key_quota: int
    tenant_quota: int
    window_s: int

    def __post_init__(self) -> None:
        if min(self.key_quota, self.tenant_quota, self.window_s) < 1:
            raise ValueError("rate-limit quotas and window must be at least 1")


@dataclass(frozen=True, slots=True)
class TenantLimits:
    tenant_id: str
    overrides: LimitOverrides
    defaults: Defaults

    @property
    def tenant_quota(self) -> int:
        return self.overrides.tenant_quota or self.defaults.tenant_quota

    @property
    def key_quota(self) -> int:
        return self.overrides.key_quota or self.defaults.key_quota


def _check(field: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_QUOTA:
        raise Invalid(
            f"'{field}' must be between 1 and {MAX_QUOTA}, or null for the platform default; got {value}.",
            errors=[{"field": field, "message": f"1..{MAX_QUOTA} or null"}],
        )


def check_overrides(overrides: LimitOverrides) -> None:
    _check("tenant_quota", overrides.tenant_quota)
    _check("key_quota", overrides.key_quota)


class LimitsService:
    def __init__(
        self, db: Store, defaults: Defaults, *, cache_ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.defaults = defaults
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, LimitOverrides]] = {}

    def get(self, tenant_id: str) -> TenantLimits:
        with self.db.read() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            overrides = TenantLimitsRepository(session).get(tenant_id)
        return TenantLimits(tenant_id, overrides, self.defaults)

    def set(self, tenant_id: str, overrides: LimitOverrides) -> TenantLimits:
        check_overrides(overrides)
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            TenantLimitsRepository(session).put(tenant_id, overrides)
        self._cache.pop(tenant_id, None)
        return TenantLimits(tenant_id, overrides, self.defaults)

    def cached_policies(self, principal: Principal) -> list[Policy] | None:
        """The caller's policies without touching the database, or None on a cache miss."""
        if principal.tenant_id is None:
            return self._policies(principal, None)
        hit = self._cache.get(principal.tenant_id)
        if hit is None or hit[0] <= self._clock():
            return None
        return self._policies(principal, hit[1])

    def load_policies(self, principal: Principal) -> list[Policy]:
        """Read the tenant's overrides (blocking), cache them, and return the policies."""
        if principal.tenant_id is None:
            return self._policies(principal, None)
        with self.db.read() as session:
            overrides = TenantLimitsRepository(session).get(principal.tenant_id)
        self._cache[principal.tenant_id] = (self._clock() + self.cache_ttl, overrides)
        return self._policies(principal, overrides)

    def _policies(self, principal: Principal, overrides: LimitOverrides | None) -> list[Policy]:
        window = float(self.defaults.window_s)
        if principal.tenant_id is None or overrides is None:  # an operator key: no tenant to count
            return [Policy("key", f"key:{principal.key_id}", self.defaults.key_quota, window)]
        limits = TenantLimits(principal.tenant_id, overrides, self.defaults)
        return [
            Policy("key", f"key:{principal.key_id}", limits.key_quota, window),
            Policy("tenant", f"tenant:{principal.tenant_id}", limits.tenant_quota, window),
        ]
