"""Per-tenant rate-limit overrides (``tenant_limits``). NULL means the platform default.

The columns are named per minute after the default 60 s window; they hold the quota per
rate-limit window, whatever ``rate_limit_window_s`` is set to.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from control.domain.records import LimitOverrides
from control.store.models import TenantLimitsRow

NO_OVERRIDES = LimitOverrides(None, None)


class TenantLimitsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> LimitOverrides:
        row = self.session.get(TenantLimitsRow, tenant_id)
        if row is None:
            return NO_OVERRIDES
        return LimitOverrides(row.requests_per_minute, row.key_requests_per_minute)

    def put(self, tenant_id: str, overrides: LimitOverrides) -> LimitOverrides:
        row = self.session.get(TenantLimitsRow, tenant_id)
        if row is None:
            row = TenantLimitsRow(tenant_id=tenant_id)
            self.session.add(row)
        row.requests_per_minute = overrides.tenant_quota
        row.key_requests_per_minute = overrides.key_quota
        self.session.flush()
        return overrides
