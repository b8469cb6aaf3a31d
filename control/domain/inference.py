"""The inference services one process shares, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

from control.domain.gateway_routing import NodeRouter
from control.domain.inference_limits import InferenceLimits, InferenceLimitsService
from control.domain.inference_quota import InferenceQuota
from control.domain.nodes import NodeService
from control.domain.usage import UsageService
from control.settings import Settings
from control.store.database import Store
from runtime.resilience import BreakerRegistry


@dataclass(frozen=True)
class Inference:
    nodes: NodeService
    router: NodeRouter  # per-node breakers and in-flight counts
    limits: InferenceLimitsService
    quota: InferenceQuota
    usage: UsageService

    @classmethod
    def build(cls, settings: Settings, db: Store, breakers: BreakerRegistry) -> Inference:
        usage = UsageService(db)
        limits = InferenceLimitsService(
            db,
            InferenceLimits(
                settings.inference_requests_per_minute,
                settings.inference_tokens_per_minute,
                settings.inference_token_budget,
                settings.inference_budget_period,
            ),
            cache_ttl=settings.rate_limit_cache_ttl_s,
        )
        return cls(
            nodes=NodeService(db, stale_after_s=settings.inference_node_stale_s),
            router=NodeRouter(
                breakers,
                failure_threshold=settings.inference_breaker_failures,
                reset_timeout_s=settings.inference_breaker_reset_s,
            ),
            limits=limits,
            quota=InferenceQuota(limits, usage),
            usage=usage,
        )
