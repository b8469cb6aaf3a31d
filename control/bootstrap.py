"""The composition root: everything one control-plane process shares, built once from
settings by ``bootstrap``. The HTTP app (``control.app``), the CLI and the tests all get
their services here, and handlers receive them as Litestar dependencies by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import structlog

from control.api.gateway_proxy import Upstream
from control.api.inference_metrics import InferenceMetrics
from control.api.metrics import Metrics
from control.domain.apps import AppService
from control.domain.audit import AuditService
from control.domain.backups import BackupService
from control.domain.compute import ComputeConfig, ComputeQuota
from control.domain.cron import CronService
from control.domain.databases import DatabaseConfig, DatabaseService
from control.domain.deployments import DEPLOY_JOB, DeploymentService
from control.domain.domains import DomainConfig, DomainService
from control.domain.env import EnvService
from control.domain.environments import EnvironmentConfig, EnvironmentService
from control.domain.events import EventService
from control.domain.gateway_routing import NodeRouter
from control.domain.idempotency import IdempotencyService
from control.domain.inference import Inference
from control.domain.inference_limits import InferenceLimits, InferenceLimitsService
from control.domain.inference_quota import InferenceQuota
from control.domain.keys import KeyService
from control.domain.limits import Defaults, LimitsService
from control.domain.links import LinkService
from control.domain.metered_usage import MeteringService
from control.domain.nodes import NodeService
from control.domain.previews import PreviewConfig, PreviewService, SnapshotForks
from control.domain.recovery import RecoveryConfig, RecoveryService
from control.domain.registration import RegistrationService
from control.domain.releases import ReleaseService
from control.domain.runs import RUN_JOB, RunLimits, RunService
from control.domain.snapshots import SnapshotConfig, SnapshotService
from control.domain.tenants import TenantService
from control.domain.usage import UsageService
from control.domain.volumes import VolumeConfig, VolumeService
from control.jobs.databases import DatabaseJobs, DatabaseRuntime
from control.jobs.deploy import DeployPipeline
from control.jobs.domains import CustomDomains, DomainRouting, DomainVerifier
from control.jobs.environment_pool import PoolConfig, WarmPool, parse_pool_sizes
from control.jobs.environments import Sandboxes
from control.jobs.metering import Sampler, StorageSources
from control.jobs.operator_health import OperatorHealth
from control.jobs.queue import JobQueue, QueueConfig
from control.jobs.retention import Retention
from control.jobs.runs import RunJob
from control.jobs.runtime_docker import DockerAppRuntime
from control.jobs.scheduler import CronScheduler
from control.jobs.snapshots import SnapshotJobs
from control.jobs.teardown import RuntimeTeardown
from control.jobs.volumes import RuntimeVolumes, VolumeUpkeep
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from control.reconcile.reconciler import Reconciler
from control.security.auth_throttle import AuthThrottle
from control.security.keyring import ReloadingKeyring
from control.security.master_keys import KeySource
from control.security.rate_limit import SlidingWindowLimiter
from control.settings import Settings
from control.store.database import Store
from runtime.domain_checks import DomainChecks, parse_nameservers
from runtime.resilience import BreakerRegistry, default_registry

log = structlog.get_logger("moorage.bootstrap")


@dataclass(frozen=True)
class Deploys:
    deployments: DeploymentService
    releases: ReleaseService
    queue: JobQueue
    runtime: DockerAppRuntime
    workers: WorkerPool
    reconciler: Reconciler
    teardown: RuntimeTeardown  # what a deleted app or tenant had running

    def start(self, *, sole: bool = False) -> None:
        self.workers.start(sole=sole)
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()
        self.workers.stop()
        self.teardown.drain()


@dataclass(frozen=True)
class ManagedDatabases:
    databases: DatabaseService
    links: LinkService
    backups: BackupService
    jobs: DatabaseJobs  # their job kinds run on the one worker pool; this adds the volume purge sweep

    def start(self) -> None:
        self.jobs.start()

    def stop(self) -> None:
        self.jobs.stop()


@dataclass(frozen=True)
class OneOffRuns:
    runs: RunService
    cron: CronService
    job: RunJob  # the ``run`` job kind, on the one worker pool


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
    events: EventService  # what happened to tenants' resources: the stream, long polls and webhooks read them
    deploys: Deploys  # deployments, releases, job workers, reconciler
    retention: Retention  # the sweep that trims expired keys, old audit events, finished jobs
    inference: Inference  # nodes, gateway routing, quotas, usage
    databases: ManagedDatabases  # managed Postgres/Redis, links, backups
    runs: OneOffRuns  # one-off runs of an app's release, and the cron schedules that start them
    environments: Sandboxes  # leased sandbox containers to exec in; the reconciler removes expired ones
    environment_pool: WarmPool  # environment containers started ahead of time, per base image
    scheduler: CronScheduler  # fires due schedules: apps' (each a run) and databases' backups
    custom_domains: CustomDomains  # apps' own hostnames: ownership proofs, routes, certificates
    volumes: VolumeService  # app volumes and per-tenant storage quotas
    registration: RegistrationService  # registration tokens, and the tenants people register with them
    recovery: RecoveryService  # recovery codes: a new admin key for a tenant that lost its keys
    compute: ComputeQuota  # per-tenant apps, replicas, CPU, memory and build minutes
    previews: PreviewService  # preview deployments: apps of kind preview, deleted at their TTL
    operator_health: OperatorHealth  # GET /v1/operator/health: disks, Docker, sandbox, Traefik, jobs, nodes
    metering: MeteringService  # hourly compute, storage and build usage per tenant
    snapshots: SnapshotService  # app snapshots (image, sealed env, links, volume and database data) and forks
    sampler: Sampler  # reads containers' counters and storage into metering

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
        "events": "events",
        "settings": "settings",
        "store": "db",
        "breakers": "breakers",
        "inference": "inference",
        "databases": "databases.databases",
        "links": "databases.links",
        "backups": "databases.backups",
        "runs": "runs.runs",
        "environments": "environments",
        "cron": "runs.cron",
        "domains": "custom_domains.domains",
        "custom_domains": "custom_domains",
        "volumes": "volumes",
        "registration": "registration",
        "recovery": "recovery",
        "compute": "compute",
        "previews": "previews",
        "operator_health": "operator_health",
        "metering": "metering",
        "snapshots": "snapshots",
        "app_runtime": "deploys.runtime",
        "upstream": "upstream",
        "prometheus": "metrics",
        "inference_metrics": "inference_metrics",
    }

    def start(self) -> None:
        """Begin serving: the background work starts, after migrations. A server that is the
        only one on its database (SQLite) first takes back what the process before it held:
        Idempotency-Keys in flight and running jobs, so retries and deployments go on at
        once instead of after their leases. ``DatabaseInUse`` when another server is live."""
        sole = self.db.claim_sole_use()
        if sole:
            released = self.idempotency.release_all_in_flight()
            if released:
                log.warning("idempotency_claims_released", count=released, reason="the previous server process stopped")
        self.deploys.start(sole=sole)  # job workers + reconciler
        self.databases.start()
        self.scheduler.start()  # after the workers: a firing missed while down is queued at once
        self.custom_domains.verifier.start()
        self.sampler.start()
        self.environment_pool.start()

    def stop(self) -> None:
        self.environment_pool.stop()
        self.sampler.stop()
        self.custom_domains.verifier.stop()
        self.scheduler.stop()
        self.databases.stop()
        self.deploys.stop()

    def route_api(self, host: str, port: int) -> str | None:
        """Route ``api.<base-domain>`` through Traefik to this server, listening on ``host``:
        ``port``; the hostname, or None when ``api_route`` is off."""
        if not self.settings.api_route:
            return None
        hostname, url = self._api_upstream(host, port)
        self.deploys.runtime.route_upstream(hostname, url)
        log.info("api_routed", hostname=hostname, upstream=url)
        return hostname

    def unroute_api(self, host: str, port: int) -> None:
        """The route ``route_api`` wrote, removed as the server stops (unless another server
        has routed the name to itself since)."""
        if self.settings.api_route:
            self.deploys.runtime.unroute_upstream(*self._api_upstream(host, port))

    def _api_upstream(self, host: str, port: int) -> tuple[str, str]:
        address = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # Traefik runs on this host
        url = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
        return f"api.{self.settings.base_domain}", url


def compute_quota(db: Store, settings: Settings, runtime: DockerAppRuntime) -> ComputeQuota:
    """The tenant quotas count each container at the limits Docker is given for it."""
    limits = runtime.rt.default_limits
    return ComputeQuota(
        db,
        ComputeConfig(
            max_apps=settings.tenant_max_apps,
            max_replicas=settings.tenant_max_replicas,
            max_millicpus=round(settings.tenant_max_cpu * 1000),
            max_memory_mb=settings.tenant_max_memory_mb,
            build_minutes_per_day=settings.tenant_build_minutes_per_day,
            max_environments=settings.tenant_max_environments,
            container_millicpus=limits.nano_cpus // 1_000_000,
            container_memory_mb=limits.memory_bytes // (1024 * 1024),
        ),
    )


def pool_config(settings: Settings, environments: EnvironmentConfig) -> PoolConfig:
    return PoolConfig(
        sizes=parse_pool_sizes(settings.environment_pool, environments.images),
        millicpus=environments.millicpus_default,
        memory_mb=environments.memory_mb_default,
        refill_s=settings.environment_pool_refill_s,
    )


def environment_config(settings: Settings) -> EnvironmentConfig:
    return EnvironmentConfig(
        images=settings.environment_image_list,
        lease_default_s=settings.environment_lease_default_s,
        lease_max_s=settings.environment_lease_max_s,
        lifetime_max_s=settings.environment_lifetime_max_s,
        millicpus_default=round(settings.environment_cpu_default * 1000),
        millicpus_max=round(settings.environment_cpu_max * 1000),
        memory_mb_default=settings.environment_memory_mb_default,
        memory_mb_max=settings.environment_memory_mb_max,
        exec_timeout_default_s=settings.environment_exec_timeout_default_s,
        exec_timeout_max_s=settings.environment_exec_timeout_max_s,
        output_max_bytes=settings.environment_output_max_bytes,
        upload_max_bytes=settings.environment_upload_max_bytes,
        download_max_bytes=settings.environment_download_max_bytes,
    )


def bootstrap(settings: Settings, *, breakers: BreakerRegistry | None = None) -> Services:
    """Build every service of one process; nothing starts (workers, the reconciler) until
    the app's startup hooks run."""
    db = Store(settings.database_url)
    events = EventService(db)  # first: every service that changes state publishes through it
    registry = default_registry if breakers is None else breakers
    keyring = ReloadingKeyring(KeySource.of(settings))
    runtime = DockerAppRuntime(settings, registry)  # adapters made on first use: building this needs no Docker
    teardown = RuntimeTeardown(
        runtime, tenant_name=lambda tenant_id: tenants.name(tenant_id), kept_images=lambda: releases.kept_images()
    )
    tenants = TenantService(db, teardown)
    env_vars = EnvService(db, keyring)
    links = LinkService(db, keyring)  # the deploy pipeline resolves database links at container start
    queue = JobQueue(
        db,
        QueueConfig(
            lease_s=float(settings.job_lease_s),
            per_tenant=settings.deploys_per_tenant,
            dependency_wait_s=float(settings.job_dependency_wait_s),
        ),
    )
    locks = AppLocks()
    volumes = VolumeService(
        db,
        RuntimeVolumes(runtime, locks),
        VolumeConfig(
            quota=settings.volume_quota,
            max_size_mb=settings.volume_max_size_mb,
            max_volumes=settings.volume_max_per_tenant,
            max_total_mb=settings.volume_max_total_mb,
            max_snapshot_mb=settings.snapshot_max_total_mb,
        ),
    )

    compute = compute_quota(db, settings, runtime)
    deployments = DeploymentService(db, queue, settings.data_dir, max_attempts=settings.job_max_attempts, quota=compute)
    releases = ReleaseService(db, kept_releases=settings.kept_releases)
    pipeline = DeployPipeline(
        settings,
        deployments,
        releases,
        env_vars,
        runtime,
        locks,
        links,
        volumes,
        went_live=lambda: reconciler.wake(),
        built=lambda tenant_id, started, ended: sampler.record_build(tenant_id, started, ended),
        databases_ready=lambda app_id: snapshot_forks.ready(app_id),
    )

    databases = DatabaseService(
        db,
        keyring,
        queue,
        DatabaseConfig(
            max_databases=settings.database_max_per_tenant,
            max_memory_mb=settings.database_max_memory_mb,
            backup_retention=settings.database_backup_retention,
            backup_min_interval_s=settings.database_backup_min_interval_s,
            volume_grace=timedelta(seconds=settings.database_volume_grace_s),
            max_attempts=settings.job_max_attempts,
        ),
        settings.data_dir,
    )
    backups = BackupService(databases, default_retention=settings.database_backup_retention)
    database_jobs = DatabaseJobs(
        databases,
        backups,
        tenants,
        DatabaseRuntime(runtime),
        provision_timeout_s=float(settings.database_provision_timeout_s),
        sweep_interval_s=float(settings.database_purge_interval_s),
    )

    runs = RunService(
        db,
        queue,
        settings.data_dir,
        RunLimits(timeout_default_s=settings.run_timeout_default_s, timeout_max_s=settings.run_timeout_max_s),
        max_attempts=settings.job_max_attempts,
    )
    run_job = RunJob(
        runs,
        releases,
        env_vars,
        runtime,
        tenant_name=tenants.name,
        output_max_bytes=settings.run_output_max_bytes,
        links=links,
        volumes=volumes,
    )
    cron = CronService(db, runs, max_per_app=settings.cron_max_per_app)
    audit = AuditService(db)
    environment_rules = EnvironmentService(db, environment_config(settings), compute)
    environment_pool = WarmPool(runtime, pool_config(settings, environment_rules.config))
    sandboxes = Sandboxes(
        environment_rules,
        runtime,
        pool=environment_pool,
        tenant_name=tenants.name,
        env_vars=env_vars,
        links=links,
        audit=audit,
    )

    domains = DomainService(
        db,
        DomainConfig(
            base_domain=settings.base_domain,
            methods=tuple(m.strip() for m in settings.domain_verify_methods.split(",") if m.strip()),
            verify_for=timedelta(seconds=settings.domain_verify_timeout_s),
            verify_interval=timedelta(seconds=settings.domain_verify_interval_s),
            max_per_app=settings.domain_max_per_app,
            tls=bool(settings.acme_email),
        ),
    )
    domain_routing = DomainRouting(
        lambda: runtime.router,
        lambda: runtime.instance,
        cert_resolver=settings.acme_resolver if settings.acme_email else None,
        verify_upstream=settings.api_upstream_url or f"http://127.0.0.1:{settings.port}",
        platform_tls=(Path(settings.tls_cert_file), Path(settings.tls_key_file)) if settings.tls_cert_file else None,
    )
    domain_verifier = DomainVerifier(
        domains,
        DomainChecks(
            parse_nameservers(settings.domain_nameservers),
            http_port=settings.domain_http_port,
            internal_allowed=settings.domain_networks,
        ),
        domain_routing,
    )

    apps = AppService(db, teardown, max_replicas=settings.max_replicas, rescaled=lambda: reconciler.wake(), quota=compute)
    snapshots = SnapshotService(
        db,
        keyring,
        queue,
        settings.data_dir,
        apps=apps,
        env_vars=env_vars,
        volumes=volumes,
        databases=databases,
        links=links,
        config=SnapshotConfig(max_total_mb=settings.snapshot_max_total_mb, max_attempts=settings.job_max_attempts),
    )
    snapshot_jobs = SnapshotJobs(snapshots, volumes, releases, deployments, database_jobs, runtime, locks, tenants.name)

    # The one registry of job kinds, fixed here: what each kind runs, and whom it tells when given up.
    workers = WorkerPool(
        queue,
        {
            DEPLOY_JOB: JobKind(pipeline, pipeline.give_up),
            RUN_JOB: JobKind(run_job, run_job.give_up),
            **database_jobs.kinds(),
            **snapshot_jobs.kinds(),
        },
        count=settings.job_workers,
    )
    audit = AuditService(db)
    previews = PreviewService(
        db,
        apps,
        env_vars,
        deployments,
        PreviewConfig(
            ttl_default_s=settings.preview_ttl_default_s,
            ttl_max_s=settings.preview_ttl_max_s,
            max_per_app=settings.preview_max_per_app,
        ),
        audit=audit,
    )
    snapshot_forks = SnapshotForks(snapshots, databases)
    previews.use_snapshots(snapshot_forks)  # "snapshot": the preview's own databases, forked from it
    reconciler = Reconciler(
        releases,
        deployments,
        env_vars,
        runtime,
        locks,
        interval_s=float(settings.reconcile_interval_s),
        links=links,
        tenant_names=tenants.names,
        tenant_ids=tenants.ids,
        build_layer_grace_s=float(settings.build_layer_grace_s),
        # Traefik's reload (its provider throttle) and the requests already sent: then the stop.
        drain_s=max(1.0, settings.swap_drain_ms / 1000),
        sweeps={
            "database containers": database_jobs.remove_orphan_containers,
            "run containers": run_job.remove_orphan_containers,
            "environments": sandboxes.sweep,
            "domain routes": domain_verifier.sweep,
            "snapshot files": snapshots.remove_orphan_files,
        },
        volumes=VolumeUpkeep(volumes, runtime, orphan_grace_s=float(settings.volume_orphan_grace_s)),
        expiries={"previews": previews.expire_due},
    )

    metering = MeteringService(db)
    sampler = Sampler(
        runtime,
        metering,
        tenants.ids_by_name,
        StorageSources(
            volumes=lambda: _volume_bytes(volumes),
            database_of=lambda database_id: found.tenant_id if (found := databases.load(database_id)) else None,
            backups_dir=settings.data_dir / "backups",
            snapshots_dir=settings.data_dir / "snapshots",
        ),
        interval_s=settings.metering_interval_s,
        storage_interval_s=settings.metering_storage_interval_s,
    )
    usage = UsageService(db)
    inference_limits = InferenceLimitsService(
        db,
        InferenceLimits(
            settings.inference_requests_per_minute,
            settings.inference_tokens_per_minute,
            settings.inference_token_budget,
            settings.inference_budget_period,
        ),
        cache_ttl=settings.rate_limit_cache_ttl_s,
    )
    inference = Inference(
        nodes=NodeService(db, stale_after_s=settings.inference_node_stale_s),
        router=NodeRouter(
            registry, failure_threshold=settings.inference_breaker_failures, reset_timeout_s=settings.inference_breaker_reset_s
        ),
        limits=inference_limits,
        quota=InferenceQuota(inference_limits, usage),
        usage=usage,
    )
    custom_domains = CustomDomains(
        domains,
        domain_routing,
        CronScheduler(domain_verifier, interval_s=min(1.0, settings.domain_verify_interval_s), name="moorage-domains"),
        store=Path(settings.acme_storage),
        traefik_log=Path(settings.traefik_log) if settings.traefik_log else None,
    )
    metrics = Metrics(
        registry,
        certificate_ends=custom_domains.certificate_ends,
        tenant_usage=sampler.snapshot,
        max_tenants=settings.metering_metrics_max_tenants,
    )
    limiter = SlidingWindowLimiter()
    idempotency = IdempotencyService(
        db,
        retention=timedelta(seconds=settings.idempotency_retention_s),
        lease=timedelta(seconds=settings.idempotency_lease_s),
    )
    limits = LimitsService(
        db,
        Defaults(settings.rate_limit_key_quota, settings.rate_limit_tenant_quota, settings.rate_limit_window_s),
        cache_ttl=settings.rate_limit_cache_ttl_s,
    )
    registration = RegistrationService(db, limits=limits, databases=databases, volumes=volumes, inference_limits=inference_limits)
    recovery = RecoveryService(
        db,
        limiter,
        RecoveryConfig(
            max_failures=settings.recovery_max_failures,
            lock_s=settings.recovery_lock_s,
            tenant_quota=settings.recovery_quota,
            window_s=settings.recovery_window_s,
        ),
    )
    return Services(
        settings=settings,
        db=db,
        tenants=tenants,
        keys=KeyService(db, last_used_resolution=timedelta(seconds=settings.key_last_used_resolution_s)),
        apps=apps,
        idempotency=idempotency,
        limits=limits,
        rate_limiter=limiter,
        auth_throttle=AuthThrottle(limiter, quota=settings.auth_failure_quota, window_s=settings.auth_failure_window_s),
        breakers=registry,
        keyring=keyring,
        env_vars=env_vars,
        audit=audit,
        events=events,
        retention=Retention(
            idempotency,
            audit,
            queue,
            audit_for=timedelta(seconds=settings.audit_retention_s) if settings.audit_retention_s else None,
            jobs_for=timedelta(seconds=settings.job_retention_s),
            jobs_kept=settings.jobs_kept,
            runs=runs,
            runs_kept=settings.runs_kept_per_app,
            recovery=recovery,
            events=events,
            events_for=timedelta(seconds=settings.event_retention_s) if settings.event_retention_s else None,
        ),
        deploys=Deploys(deployments, releases, queue, runtime, workers, reconciler, teardown),
        inference=inference,
        databases=ManagedDatabases(databases, links, backups, database_jobs),
        runs=OneOffRuns(runs, cron, run_job),
        environments=sandboxes,
        environment_pool=environment_pool,
        scheduler=CronScheduler(cron, backups, interval_s=settings.cron_tick_ms / 1000),
        custom_domains=custom_domains,
        volumes=volumes,
        registration=registration,
        recovery=recovery,
        compute=compute,
        previews=previews,
        operator_health=OperatorHealth(
            settings, queue, registry, inference, lambda: reconciler.last_pass, pool=environment_pool.status
        ),
        metering=metering,
        snapshots=snapshots,
        sampler=sampler,
        upstream=Upstream(settings),
        metrics=metrics,
        inference_metrics=InferenceMetrics(metrics.registry, inference),
    )


def _volume_bytes(volumes: VolumeService) -> dict[str, int]:
    """Bytes each tenant's app volumes held at their last measurement (the reconciler's)."""
    held: dict[str, int] = {}
    for volume in volumes.all():
        held[volume.tenant_id] = held.get(volume.tenant_id, 0) + (volume.used_bytes or 0)
    return held
