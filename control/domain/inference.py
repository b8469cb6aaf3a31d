"""The inference services one process shares (built by ``control.bootstrap``)."""

from __future__ import annotations

from dataclasses import dataclass

from control.domain.gateway_routing import NodeRouter
from control.domain.inference_limits import InferenceLimitsService
from control.domain.inference_quota import InferenceQuota
from control.domain.nodes import NodeService
from control.domain.usage import UsageService


@dataclass(frozen=True)
class Inference:
    nodes: NodeService
    router: NodeRouter  # per-node breakers and in-flight counts
    limits: InferenceLimitsService
    quota: InferenceQuota
    usage: UsageService
