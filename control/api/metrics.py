"""``GET /metrics``: Prometheus text format, one CollectorRegistry per app instance.

Requests are labelled by route *template* (``/v1/apps/{app}``), never the raw path, so
label cardinality stays bounded; unrouted requests (404/405) share ``route="unmatched"``.
Breaker states are read from the registry at scrape time (0 closed, 1 half-open, 2 open).

Access: an operator key, unless ``MOORAGE_METRICS_PUBLIC=true`` (then anyone who can
reach the bind address may scrape; the default bind is loopback).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, Protocol

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from control.api.problems import problem_responses
from control.security.scopes import OPERATOR_ACCESS
from runtime.resilience import BreakerRegistry, BreakerState

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class _BreakerCollector(Collector):
    def __init__(self, breakers: BreakerRegistry) -> None:
        self.breakers = breakers

    def collect(self) -> Iterator[Any]:
        state = GaugeMetricFamily(
            "moorage_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", labels=["breaker"]
        )
        opened = CounterMetricFamily(
            "moorage_circuit_breaker_opened", "Times the breaker opened since the process started", labels=["breaker"]
        )
        for snap in self.breakers.snapshot():
            state.add_metric([snap.name], BREAKER_STATE_VALUE[snap.state])
            opened.add_metric([snap.name], snap.opened_total)
        yield state
        yield opened


class _CertificateCollector(Collector):
    def __init__(self, ends: Callable[[], dict[str, datetime]]) -> None:
        self.ends = ends

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "moorage_certificate_not_after_seconds",
            "When each custom domain's certificate ends (Unix time), read from Traefik's ACME store",
            labels=["hostname"],
        )
        try:
            ends = self.ends()
        except Exception:  # noqa: BLE001 (a scrape reports what it can; /readyz names the problem)
            ends = {}
        for hostname, end in sorted(ends.items()):
            gauge.add_metric([hostname], end.timestamp())
        yield gauge


class TenantUsage(Protocol):
    """The metering sampler's live view, by tenant id."""

    @property
    def counters(self) -> dict[tuple[str, str], float]: ...  # (tenant, resource) -> all-time amount
    @property
    def memory(self) -> dict[str, float]: ...  # bytes in use at the last reading
    @property
    def storage(self) -> dict[tuple[str, str], float]: ...  # (tenant, category) -> bytes


OTHER_TENANTS = "_other"
_TENANT_COUNTERS = (
    ("cpu_seconds", "moorage_tenant_cpu_seconds", "CPU-seconds used by the tenant's containers (apps, runs, databases)"),
    ("net_rx_bytes", "moorage_tenant_network_receive_bytes", "Bytes the tenant's containers received"),
    ("net_tx_bytes", "moorage_tenant_network_transmit_bytes", "Bytes the tenant's containers sent"),
    ("block_read_bytes", "moorage_tenant_block_read_bytes", "Block I/O bytes read (0 under gVisor)"),
    ("block_write_bytes", "moorage_tenant_block_write_bytes", "Block I/O bytes written (0 under gVisor)"),
    ("build_seconds", "moorage_tenant_build_seconds", "Seconds the tenant's builds ran"),
    ("builds", "moorage_tenant_builds", "Builds the tenant ran"),
)


class _TenantUsageCollector(Collector):
    """Per-tenant usage with bounded cardinality: the ``max_tenants`` tenants with the most
    CPU-seconds get series of their own, every other tenant adds to ``tenant="_other"``."""

    def __init__(self, usage: Callable[[], TenantUsage], max_tenants: int) -> None:
        self.usage = usage
        self.max_tenants = max_tenants

    def collect(self) -> Iterator[Any]:
        try:
            live = self.usage()
        except Exception:  # noqa: BLE001 (a scrape reports what it can)
            return
        tenants = {t for t, _ in live.counters} | set(live.memory) | {t for t, _ in live.storage}
        ranked = sorted(tenants, key=lambda t: (-live.counters.get((t, "cpu_seconds"), 0.0), t))
        kept = set(ranked[: self.max_tenants])

        def label(tenant: str) -> str:
            return tenant if tenant in kept else OTHER_TENANTS

        for resource, name, help_text in _TENANT_COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["tenant"])
            values = _sum_by(((label(t),), v) for (t, r), v in live.counters.items() if r == resource)
            for (tenant,), value in values:
                family.add_metric([tenant], value)
            yield family
        memory = GaugeMetricFamily(
            "moorage_tenant_memory_bytes", "Memory the tenant's containers held at the last reading", labels=["tenant"]
        )
        for (tenant,), value in _sum_by(((label(t),), v) for t, v in live.memory.items()):
            memory.add_metric([tenant], value)
        yield memory
        storage = GaugeMetricFamily(
            "moorage_tenant_storage_bytes",
            "Storage the tenant holds, by kind: volumes, database_volumes, images, backups, snapshots",
            labels=["tenant", "kind"],
        )
        for (tenant, kind), value in _sum_by(((label(t), k), v) for (t, k), v in live.storage.items()):
            storage.add_metric([tenant, kind], value)
        yield storage


def _sum_by(pairs: Iterable[tuple[tuple[str, ...], float]]) -> list[tuple[tuple[str, ...], float]]:
    summed: dict[tuple[str, ...], float] = {}
    for key, value in pairs:
        summed[key] = summed.get(key, 0.0) + value
    return sorted(summed.items())


class Metrics:
    def __init__(
        self,
        breakers: BreakerRegistry,
        certificate_ends: Callable[[], dict[str, datetime]] | None = None,
        tenant_usage: Callable[[], TenantUsage] | None = None,
        max_tenants: int = 200,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "moorage_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "moorage_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.rate_limit_rejections = Counter(
            "moorage_rate_limit_rejections",
            "Requests refused with 429, by the policy that refused",
            ["limit"],
            registry=self.registry,
        )
        self.idempotency_outcomes = Counter(
            "moorage_idempotency_outcomes",
            "Idempotency-Key handling: stored, released (5xx), replayed, in_flight (409), key_reused (422), "
            "invalid_key (400), taken_over (expired lease)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_BreakerCollector(breakers))
        if certificate_ends is not None:
            self.registry.register(_CertificateCollector(certificate_ends))
        if tenant_usage is not None:
            self.registry.register(_TenantUsageCollector(tenant_usage, max_tenants))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def rate_limited(self, limit: str) -> None:
        self.rate_limit_rejections.labels(limit).inc()

    def idempotency(self, outcome: str) -> None:
        self.idempotency_outcomes.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HasMetrics(Protocol):
    @property
    def metrics(self) -> Metrics: ...


class HttpMetrics:
    """Wraps the whole app (inside RequestContext) so 404/405 answered by the router count too."""

    def __init__(self, app: ASGIApp, services: Callable[[], HasMetrics]) -> None:
        self.app = app
        self.services = services  # the app's attached services, read per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("path_template") or "unmatched"
            self.services().metrics.observe(method, route, status, time.perf_counter() - started)


def metrics_handler(*, public: bool) -> Any:
    """The /metrics route: operator-only unless ``public``."""
    opt: dict[str, Any] = {"public": True} if public else {"access": OPERATOR_ACCESS}

    @get(
        "/metrics",
        opt=opt,
        summary="Prometheus metrics",
        description="Prometheus text exposition format. Needs an operator key unless MOORAGE_METRICS_PUBLIC=true.",
        tags=["health"],
        media_type=CONTENT_TYPE_LATEST,
        responses=problem_responses(401, 403, 429) if not public else None,
        security=None if public else [{"ApiKey": []}],
    )
    async def metrics(prometheus: NamedDependency[Metrics]) -> Response[bytes]:
        return Response(prometheus.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics
