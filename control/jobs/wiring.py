"""Everything deployments need, built once per process from settings: the services the API
uses, the job queue and its workers, the reconciler. ``start``/``stop`` run from the app's
startup/shutdown hooks (after migrations, before the database is closed)."""

from __future__ import annotations

from dataclasses import dataclass

from control.domain.deployments import DEPLOY_JOB, DeploymentService
from control.domain.env import EnvService
from control.domain.links import LinkService
from control.domain.releases import ReleaseService
from control.domain.tenants import TenantService
from control.jobs.deploy import DeployPipeline
from control.jobs.queue import JobQueue, QueueConfig
from control.jobs.runtime_docker import DockerAppRuntime
from control.jobs.workers import AppLocks, WorkerPool
from control.reconcile.reconciler import Reconciler
from control.settings import Settings
from control.store.database import Store
from runtime.resilience import BreakerRegistry


@dataclass(frozen=True)
class Deploys:
    deployments: DeploymentService
    releases: ReleaseService
    queue: JobQueue
    runtime: DockerAppRuntime  # adapters made on first use: building this needs no Docker
    workers: WorkerPool
    reconciler: Reconciler

    @classmethod
    def build(cls, settings: Settings, db: Store, env_vars: EnvService, breakers: BreakerRegistry,
              links: LinkService | None = None) -> Deploys:
        queue = JobQueue(db, QueueConfig(lease_s=float(settings.job_lease_s), per_tenant=settings.deploys_per_tenant,
                                        dependency_wait_s=float(settings.job_dependency_wait_s)))
        deployments = DeploymentService(db, queue, settings.data_dir, max_attempts=settings.job_max_attempts)
        releases = ReleaseService(db)
        runtime = DockerAppRuntime(settings, breakers)
        locks = AppLocks()
        pipeline = DeployPipeline(settings, deployments, releases, env_vars, runtime, locks, links)
        queue.on_give_up[DEPLOY_JOB] = pipeline.give_up
        workers = WorkerPool(queue, {DEPLOY_JOB: pipeline}, count=settings.job_workers)
        reconciler = Reconciler(releases, deployments, env_vars, runtime, locks, interval_s=float(settings.reconcile_interval_s),
                                links=links, tenant_names=TenantService(db).names)
        return cls(deployments, releases, queue, runtime, workers, reconciler)

    def start(self) -> None:
        self.workers.start()
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()
        self.workers.stop()
