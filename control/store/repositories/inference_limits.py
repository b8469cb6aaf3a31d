"""Per-tenant inference quota overrides (``tenant_inference_limits``); NULL: platform default."""

from __future__ import annotations

from sqlalchemy.orm import Session

from control.domain.records import InferenceOverrides
from control.store.models import TenantInferenceLimitsRow


class InferenceLimitsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> InferenceOverrides:
        row = self.session.get(TenantInferenceLimitsRow, tenant_id)
        if row is None:
            return InferenceOverrides()
        return InferenceOverrides(row.requests_per_minute, row.tokens_per_minute, row.token_budget, row.budget_period)

    def put(self, tenant_id: str, overrides: InferenceOverrides) -> None:
        row = self.session.get(TenantInferenceLimitsRow, tenant_id)
        if row is None:
            row = TenantInferenceLimitsRow(tenant_id=tenant_id)
            self.session.add(row)
        row.requests_per_minute = overrides.requests_per_minute
        row.tokens_per_minute = overrides.tokens_per_minute
        row.token_budget = overrides.token_budget
        row.budget_period = overrides.budget_period
        self.session.flush()
