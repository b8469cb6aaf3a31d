"""The domain services one process shares, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

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

    def injectable(self) -> dict[str, object]:
        """What handlers receive by parameter name (``tenants: NamedDependency[TenantService]``)."""
        return {
            "tenants": self.tenants,
            "keys": self.keys,
            "apps": self.apps,
            "limits": self.limits,
            "env_vars": self.env_vars,
            "deployments": self.deploys.deployments,
            "releases": self.deploys.releases,
            "audit": self.audit,
            "settings": self.settings,
            "store": self.db,
            "breakers": self.breakers,
            "inference": self.inference,
            "databases": self.databases.databases,
            "links": self.databases.links,
            "backups": self.databases.backups,
            "app_runtime": self.deploys.runtime,
        }

    @classmethod
    def build(cls, settings: Settings, *, breakers: BreakerRegistry | None = None) -> Services:
        db = Store(settings.database_url)
        keyring = ReloadingKeyring(KeySource.of(settings))
        env_vars = EnvService(db, keyring)
        links = LinkService(db, keyring)  # the deploy pipeline resolves database links at container start
        deploys = Deploys.build(settings, db, env_vars, default_registry if breakers is None else breakers, links=links)
        return cls(
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
            breakers=default_registry if breakers is None else breakers,
            keyring=keyring,
            env_vars=env_vars,
            audit=AuditService(db),
            deploys=deploys,
            inference=Inference.build(settings, db, default_registry if breakers is None else breakers),
            databases=ManagedDatabases.build(settings, db, keyring, links, deploys),
        )
