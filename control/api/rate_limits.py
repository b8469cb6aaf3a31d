"""Rate limits per API key and per tenant, answered in draft-ietf-httpapi-ratelimit-headers-09
syntax (RFC 8941 structured fields) on every authenticated response:

    RateLimit-Policy: "key";q=120;w=60, "tenant";q=600;w=60
    RateLimit: "key";r=119;t=60, "tenant";r=599;t=60

``q`` quota and ``w`` window (seconds) per policy; ``r`` requests left and ``t`` seconds
until the oldest counted request leaves the window (rounded up; 0 when nothing is
counted). Operator keys have only the ``key`` policy. Over budget: 429 ``rate-limited``
with ``Retry-After`` and the same headers, decided before any other work (no handler
runs, nothing is written). Public endpoints (health, OpenAPI, a public /metrics) are not
limited: they carry no identity to limit by.

Sits right after authentication, before idempotency: a 429 is never stored as the
answer to an Idempotency-Key, and a replay counts against the budget like any request.

The public routes that take a credential in their body instead of an API key (self-
registration, key recovery) declare ``opt["client_limit"]``: they are limited per client
address (its IPv6 /64; the address a trusted proxy's X-Forwarded-For names), with the
``address`` policy, the quota and window of that route's settings.
"""

from __future__ import annotations

import math

import anyio.to_thread
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control.api.problems import send_problem
from control.domain.limits import LimitsService
from control.security.auth_throttle import client_bucket
from control.security.principal import Principal
from control.security.rate_limit import Decision, Policy, SlidingWindowLimiter
from control.settings import Settings

# opt["client_limit"] of a public route -> the settings of its quota and window
CLIENT_LIMITS = {
    "registration": ("registration_quota", "registration_window_s"),
    "recovery": ("recovery_quota", "recovery_window_s"),
}


def format_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    policy = ", ".join(f'"{s.policy.name}";q={s.policy.quota};w={math.ceil(s.policy.window)}' for s in decision.states)
    current = ", ".join(f'"{s.policy.name}";r={s.remaining};t={math.ceil(s.reset)}' for s in decision.states)
    return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", current.encode())]


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("user")
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        limiter: SlidingWindowLimiter = services.rate_limiter
        if isinstance(principal, Principal):
            limits: LimitsService = services.limits
            policies = limits.cached_policies(principal)
            if policies is None:  # a cache miss reads the tenant's overrides off the event loop
                policies = await anyio.to_thread.run_sync(limits.load_policies, principal)
        else:
            policies = client_policies(scope, services.settings)
            if not policies:
                await self.app(scope, receive, send)
                return
        decision = limiter.acquire(policies)
        headers = format_headers(decision)
        if not decision.admitted:
            for kind in decision.exhausted:
                services.metrics.rate_limited(kind)
            detail = (
                f"Rate limit exceeded ({', '.join(decision.exhausted)} policy). Nothing was done; retry after "
                "Retry-After seconds. The RateLimit headers show each budget; an operator can raise a tenant's."
            )
            extra = {n.decode(): v.decode() for n, v in headers} | {"Retry-After": str(decision.retry_after_s)}
            await send_problem(scope, receive, send, 429, "rate-limited", detail, headers=extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_policies(scope: Scope, settings: Settings) -> list[Policy]:
    """The per-address policy of a public route that declares ``client_limit``, else none."""
    handler = scope.get("route_handler")
    kind = handler.opt.get("client_limit") if handler is not None else None
    if kind is None:
        return []
    quota_field, window_field = CLIENT_LIMITS[kind]
    quota = int(getattr(settings, quota_field))
    if quota <= 0:
        return []
    client = scope.get("client")
    address = client_bucket(str(client[0]) if client else "unknown")
    return [Policy("address", f"{kind}:{address}", quota, float(getattr(settings, window_field)))]
