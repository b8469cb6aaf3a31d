"""A control plane whose only stand-in is the app runtime: the real SQLite store, queue,
deployment and release services, pipeline, workers' run loop and reconciler, on
``InMemoryAppRuntime``. Tests drive the queue by hand (claim, run, let a lease lapse) on a
clock they move."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from control.clock import utcnow
from control.domain.apps import AppService
from control.domain.deployments import DEPLOY_JOB, DeploymentService
from control.domain.env import EnvService, EnvValue
from control.domain.records import App, Deployment, Job, Release
from control.domain.releases import ReleaseService
from control.domain.tenants import TenantService
from control.domain.volumes import VolumeConfig, VolumeService
from control.jobs.deploy import DeployPipeline, container_name
from control.jobs.queue import JobQueue, QueueConfig
from control.jobs.runtime_fake import FakeContainer, InMemoryAppRuntime
from control.jobs.runtime_port import Route
from control.jobs.teardown import RuntimeTeardown
from control.jobs.volumes import RuntimeVolumes, VolumeUpkeep
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from control.reconcile.reconciler import Reconciler
from control.security.keyring import ReloadingKeyring
from control.security.master_keys import KeySource
from control.settings import Settings
from control.store.database import Store

DOCKERFILE = 'FROM moorage/python:3-bookworm\nCMD ["python3", "-m", "http.server"]\n'


@dataclass
class Clock:
    now: datetime = field(default_factory=utcnow)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class DeployWorld:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Store(settings.database_url)
        self.clock = Clock()
        self.queue = JobQueue(self.db, QueueConfig(lease_s=float(settings.job_lease_s)), clock=self.clock)
        self.deployments = DeploymentService(self.db, self.queue, settings.data_dir, max_attempts=settings.job_max_attempts)
        self.releases = ReleaseService(self.db, kept_releases=settings.kept_releases)
        self.env_vars = EnvService(self.db, ReloadingKeyring(KeySource.of(settings)))
        self.runtime = InMemoryAppRuntime()
        locks = AppLocks()
        self.volumes = VolumeService(self.db, RuntimeVolumes(self.runtime, locks), VolumeConfig(quota="enforced"))
        self.pipeline = DeployPipeline(
            settings, self.deployments, self.releases, self.env_vars, self.runtime, locks, volumes=self.volumes
        )
        self.workers = WorkerPool(self.queue, {DEPLOY_JOB: JobKind(self.pipeline, self.pipeline.give_up)}, count=0)
        self.teardown = RuntimeTeardown(self.runtime, tenant_name=lambda tenant_id: self.tenants.name(tenant_id))
        self.tenants = TenantService(self.db, self.teardown)
        self.reconciler = Reconciler(
            self.releases,
            self.deployments,
            self.env_vars,
            self.runtime,
            locks,
            interval_s=0,
            tenant_names=self.tenants.names,
            tenant_ids=self.tenants.ids,
            build_layer_grace_s=float(settings.build_layer_grace_s),
            wall_clock=lambda: self.clock.now.timestamp(),
            drain_s=0,
            volumes=VolumeUpkeep(self.volumes, self.runtime, clock=lambda: self.clock.now.timestamp()),
        )
        self.tenant = self.tenants.create("acme")
        self.apps = AppService(self.db, self.teardown)
        self.app: App = self.apps.create(self.tenant.id, "web", port=8080, health_check_path="/healthz")

    def close(self) -> None:
        self.teardown.drain()
        self.db.dispose()

    # -- acting -------------------------------------------------------------------------
    def set_env(self, name: str, value: str) -> None:
        self.env_vars.set(self.tenant.id, self.app.id, name, EnvValue(value))

    def add_volume(self, name: str = "data", mount_path: str = "/data", size_mb: int = 10) -> str:
        """A volume of the app (mounted from its next container start); its id."""
        return self.volumes.create(self.tenant.id, self.app.id, name, mount_path, size_mb).id

    def upload(self, dockerfile: str = DOCKERFILE) -> str:
        """A deployment of an uploaded source tree, queued (as the API leaves it)."""
        deployment_id = self.deployments.new_id()
        src = self.deployments.workdir(deployment_id) / "src"
        src.mkdir(parents=True)
        (src / "Dockerfile").write_text(dockerfile)
        self.deployments.create(self.tenant.id, self.app, deployment_id, "archive", {})
        return deployment_id

    def roll_back_to(self, release: Release) -> str:
        deployment_id = self.deployments.new_id()
        self.deployments.create(
            self.tenant.id, self.app, deployment_id, "rollback", {"release": release.name, "release_id": release.id}
        )
        return deployment_id

    def cancel(self, deployment_id: str) -> None:
        self.deployments.cancel(self.tenant.id, self.app.id, deployment_id)

    def claim(self, worker: str = "worker-1") -> Job:
        job = self.queue.claim(worker)
        assert job is not None, "no job to claim"
        return job

    def run(self, job: Job, worker: str = "worker-1") -> None:
        """What a worker thread does with a claimed job (heartbeat, handler, finish)."""
        self.workers.run_one(job, worker)

    def run_next(self, worker: str = "worker-1") -> Job:
        job = self.claim(worker)
        self.run(job, worker)
        return job

    def deploy(self) -> str:
        """Upload and run to the end; the deployment's id."""
        deployment_id = self.upload()
        self.run_next()
        return deployment_id

    def lapse_lease(self) -> list[tuple[Job, bool]]:
        """The silent worker's lease runs out; recovery requeues its job (False) or gives up (True)."""
        self.clock.advance(self.settings.job_lease_s + 1)
        outcomes = self.workers.recover()
        self.clock.advance(QueueConfig().retry_backoff_s + 1)  # the requeued job may run again
        return outcomes

    # -- reading ------------------------------------------------------------------------
    def deployment(self, deployment_id: str) -> Deployment:
        found = self.deployments.load(deployment_id)
        assert found is not None
        return found

    def job_state(self, job_id: str) -> str:
        job = self.queue.get(job_id)
        assert job is not None
        return job.state

    def release_of(self, deployment_id: str) -> Release | None:
        return self.releases.for_deployment(deployment_id)

    def app_releases(self) -> list[Release]:
        page, _, _ = self.releases.list(self.tenant.id, self.app.id, limit=100, cursor=None)
        return page.items

    def current(self) -> tuple[Release, str] | None:
        """The app's current release and the container recorded for it."""
        desired = self.releases.desired(self.app.id)
        return (desired[0].release, desired[0].container_id) if desired else None

    def running(self) -> list[FakeContainer]:
        return self.runtime.running(tenant=self.tenant.name, app=self.app.name)

    def route(self) -> Route | None:
        return self.runtime.routes.get(self.app.id)

    def serving(self) -> FakeContainer | None:
        return self.runtime.served_by(self.app.id)

    def log(self, deployment_id: str) -> str:
        return self.deployments.log_path(deployment_id).read_text()

    def container_of(self, deployment_id: str) -> FakeContainer | None:
        name = container_name(self.tenant.name, self.app.name, deployment_id)
        return next((c for c in self.runtime.containers.values() if c.name == name), None)


def world_on(settings: Settings) -> Iterator[DeployWorld]:
    world = DeployWorld(settings)
    try:
        yield world
    finally:
        world.close()
