"""The composition root: everything one control-plane process shares, built once from
settings by ``bootstrap``. The HTTP app (``control.app``), the CLI and the tests all get
their services here, and handlers receive them as Litestar dependencies by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from control.api.gateway_proxy import Upstream
from control.api.inference_metrics import InferenceMetrics
from control.api.metrics import Metrics
from control.domain.apps import AppService
from control.domain.audit import AuditService
from control.domain.env import EnvService
from control.domain.idempotency import IdempotencyService
from control.domain.inference import Inference
from control.domain.keys import KeyService
from control.domain.limits import Defaults, LimitsService
from control.domain.links import LinkService
from control.domain.tenants import TenantService
from control.jobs.database_wiring import ManagedDatabases
from control.jobs.wiring import Deploys
from control.security.auth_throttle import AuthThrottle
from control.security.keyring import ReloadingKeyring
from control.security.master_keys import KeySource
from control.security.rate_limit import SlidingWindowLimiter
from control.settings import Settings
from control.store.database import Store
from runtime.resilience import BreakerRegistry, default_registry


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Store
    tenants: TenantService
    keys: KeyService
    apps: AppService
    idempotency: IdempotencyService
    limits: LimitsService
    rate_limiter: SlidingWindowLimiter  # in memory: per process
    auth_throttle: AuthThrottle  # failed authentications per client address, in the same limiter
    breakers: BreakerRegistry  # every circuit breaker, for /readyz and /metrics
    keyring: ReloadingKeyring  # loads lazily: commands that never touch secrets never create a key
    env_vars: EnvService
    audit: AuditService
    deploys: Deploys  # deployments, releases, job workers, reconciler
    inference: Inference  # nodes, gateway routing, quotas, usage
    databases: ManagedDatabases  # managed Postgres/Redis, links, backups

    upstream: Upstream  # pooled connections to inference nodes, opened in the serving loop
    metrics: Metrics  # Prometheus, per process
    inference_metrics: InferenceMetrics

    # What handlers receive by parameter name (``tenants: NamedDependency[TenantService]``),
    # and where in here it is.
    INJECTABLE: ClassVar[dict[str, str]] = {
        "tenants": "tenants",
        "keys": "keys",
        "apps": "apps",
        "limits": "limits",
        "env_vars": "env_vars",
        "deployments": "deploys.deployments",
        "releases": "deploys.releases",
        "audit": "audit",
        "settings": "settings",
        "store": "db",
        "breakers": "breakers",
        "inference": "inference",
        "databases": "databases.databases",
        "links": "databases.links",
        "backups": "databases.backups",
        "app_runtime": "deploys.runtime",
        "upstream": "upstream",
        "prometheus": "metrics",
        "inference_metrics": "inference_metrics",
    }


def bootstrap(settings: Settings, *, breakers: BreakerRegistry | None = None) -> Services:
    """Build every service of one process; nothing starts (workers, the reconciler) until
    the app's startup hooks run."""
    db = Store(settings.database_url)
    keyring = ReloadingKeyring(KeySource.of(settings))
    env_vars = EnvService(db, keyring)
    links = LinkService(db, keyring)  # the deploy pipeline resolves database links at container start
    registry = default_registry if breakers is None else breakers
    deploys = Deploys.build(settings, db, env_vars, registry, links=links)
    inference = Inference.build(settings, db, registry)
    metrics = Metrics(registry)
    return Services(
        settings=settings,
        db=db,
        tenants=TenantService(db),
        keys=KeyService(db, last_used_resolution=timedelta(seconds=settings.key_last_used_resolution_s)),
        apps=AppService(db, unroute=deploys.runtime.remove_route),
        idempotency=IdempotencyService(
            db,
            retention=timedelta(seconds=settings.idempotency_retention_s),
            lease=timedelta(seconds=settings.idempotency_lease_s),
        ),
        limits=LimitsService(
            db,
            Defaults(settings.rate_limit_key_quota, settings.rate_limit_tenant_quota, settings.rate_limit_window_s),
            cache_ttl=settings.rate_limit_cache_ttl_s,
        ),
        rate_limiter=(limiter := SlidingWindowLimiter()),
        auth_throttle=AuthThrottle(limiter, quota=settings.auth_failure_quota, window_s=settings.auth_failure_window_s),
        breakers=registry,
        keyring=keyring,
        env_vars=env_vars,
        audit=AuditService(db),
        deploys=deploys,
        inference=inference,
        databases=ManagedDatabases.build(settings, db, keyring, links, deploys),
        upstream=Upstream(settings),
        metrics=metrics,
        inference_metrics=InferenceMetrics(metrics.registry, inference),
    )
