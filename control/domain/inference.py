"""The inference services one process shares (built by ``control.bootstrap``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from control.domain.gateway_routing import NodeRouter
from control.domain.inference_limits import InferenceLimitsService
from control.domain.inference_quota import InferenceQuota
from control.domain.nodes import NodeHealth, NodeService
from control.domain.records import Node
from control.domain.usage import UsageService
from runtime.resilience import BreakerState


@dataclass(frozen=True)
class Inference:
    nodes: NodeService
    router: NodeRouter  # per-node breakers and in-flight counts
    limits: InferenceLimitsService
    quota: InferenceQuota
    usage: UsageService

    def health(self, node: Node) -> NodeHealth:
        """The node's health as operators read it: its heartbeats' verdict, unless they say
        healthy while the gateway's breaker for the node is not closed. The breaker opens on
        the gateway's own failed requests, at once; a heartbeat can lag by an interval, so it
        alone would call a dead engine healthy. Healthy again once the breaker closes (a
        trial request succeeded) and heartbeats still say healthy."""
        health = self.nodes.health(node)
        breaker = self.router.breaker_snapshot(node.id)
        if health.status != "healthy" or breaker is None or breaker.state is BreakerState.CLOSED:
            return health
        if breaker.state is BreakerState.OPEN:
            return NodeHealth(
                "unhealthy",
                f"The gateway's circuit breaker for this node is open after {breaker.consecutive_failures} failed "
                f"requests: none are sent to it; a trial request may go in {math.ceil(breaker.retry_after)} s.",
            )
        return NodeHealth(
            "unhealthy",
            "The gateway's circuit breaker for this node is half-open: the next request to it is a trial, and the "
            "node is healthy again once one succeeds.",
        )
