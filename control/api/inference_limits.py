"""Operators set a tenant's inference quotas: ``GET/PUT /v1/tenants/{tenant_id}/inference-limits``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import endpoint
from control.domain.inference import Inference
from control.domain.inference_limits import InferenceLimits
from control.domain.records import InferenceOverrides
from control.security.scopes import OPERATOR_ACCESS


class InferenceLimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A full replacement of the tenant's overrides: a field left out (or null) returns to the default."""

    requests_per_minute: Annotated[int | None, msgspec.Meta(description="Gateway requests per minute")] = None
    tokens_per_minute: Annotated[
        int | None, msgspec.Meta(description="Tokens per minute; a request counts prompt estimate + max_tokens until it ends")
    ] = None
    token_budget: Annotated[int | None, msgspec.Meta(description="Prompt + completion tokens per budget period")] = None
    budget_period: Annotated[str | None, msgspec.Meta(description="day | month (UTC calendar)")] = None


class InferenceLimitsOut(msgspec.Struct):
    tenant_id: str
    requests_per_minute: int
    tokens_per_minute: int
    token_budget: int
    budget_period: str
    overrides: InferenceLimitsIn

    @classmethod
    def of(cls, tenant_id: str, defaults: InferenceLimits, overrides: InferenceOverrides) -> InferenceLimitsOut:
        effective = defaults.with_overrides(overrides)
        return cls(
            tenant_id=tenant_id,
            requests_per_minute=effective.requests_per_minute,
            tokens_per_minute=effective.tokens_per_minute,
            token_budget=effective.token_budget,
            budget_period=effective.budget_period,
            overrides=InferenceLimitsIn(
                overrides.requests_per_minute, overrides.tokens_per_minute, overrides.token_budget, overrides.budget_period
            ),
        )


@endpoint(
    "GET", "/v1/tenants/{tenant_id:str}/inference-limits", access=OPERATOR_ACCESS, errors=(404,),
    summary="Get a tenant's inference quotas", tags=["tenants (operator)"],
)  # fmt: skip
def get_inference_limits(inference: NamedDependency[Inference], tenant_id: FromPath[str]) -> InferenceLimitsOut:
    limits = inference.limits
    return InferenceLimitsOut.of(tenant_id, limits.defaults, limits.overrides(tenant_id))


@endpoint(
    "PUT", "/v1/tenants/{tenant_id:str}/inference-limits", access=OPERATOR_ACCESS, errors=(404,),
    summary="Set a tenant's inference quotas", tags=["tenants (operator)"],
)  # fmt: skip
def put_inference_limits(
    inference: NamedDependency[Inference], tenant_id: FromPath[str], data: JSONBody[InferenceLimitsIn]
) -> InferenceLimitsOut:
    """Takes effect at once in this process."""
    limits = inference.limits
    overrides = InferenceOverrides(data.requests_per_minute, data.tokens_per_minute, data.token_budget, data.budget_period)
    return InferenceLimitsOut.of(tenant_id, limits.defaults, limits.set(tenant_id, overrides))


INFERENCE_LIMIT_ROUTES = [get_inference_limits, put_inference_limits]
