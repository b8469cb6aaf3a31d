"""The control plane as it serves (app factory, services, queue, store), with the ``run`` job
kind on ``InMemoryAppRuntime``: the server's own job workers and scheduler are off, and the
test starts a worker pool (and a scheduler) of its own over the same queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from control.bootstrap import Services
from control.domain.records import Release
from control.domain.runs import RUN_JOB
from control.jobs.runs import RunJob
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.scheduler import CronScheduler
from control.jobs.workers import JobKind, WorkerPool
from control.settings import Settings
from tests.conftest import Caller

IMAGE = "sha256:" + "ab" * 32


def quiet(settings: Settings, **overrides: Any) -> Settings:
    """No workers, reconciler or scheduler in the server: the test runs jobs itself."""
    return settings.with_overrides(job_workers=0, reconcile_interval_s=0, cron_tick_ms=0, **overrides)


@dataclass
class RunWorld:
    services: Services
    caller: Caller
    app_id: str
    runtime: InMemoryAppRuntime
    job: RunJob
    workers: WorkerPool
    scheduler: CronScheduler | None = None

    @property
    def tenant_id(self) -> str:
        assert self.caller.tenant_id is not None
        return self.caller.tenant_id

    def release(self, number_hint: str = "dep_v1") -> Release:
        """A release of the app made current, as a deployment would leave it."""
        releases = self.services.deploys.releases
        release = releases.create(
            tenant_id=self.tenant_id,
            app_id=self.app_id,
            deployment_id=number_hint,
            image_id=IMAGE,
            image_tag=f"moorage-apps/{self.tenant_id}/web:{number_hint}",
            env_version=0,
            port=8080,
            health_check_path="/",
        )
        releases.make_current(release, [("c" * 64, "moorage-acme-web-" + number_hint)])
        self.runtime.images[IMAGE] = release.image_tag
        return release

    def start_workers(self) -> None:
        self.workers.start()

    def start_scheduler(self, interval_s: float = 0.1) -> CronScheduler:
        self.scheduler = CronScheduler(self.services.runs.cron, interval_s=interval_s)
        self.scheduler.start()
        return self.scheduler

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.workers.stop()

    def run_queued(self) -> None:
        """Claim and run the next job here and now (no worker threads)."""
        job = self.services.deploys.queue.claim("test-worker")
        assert job is not None, "no job to claim"
        self.workers.run_one(job, "test-worker")

    def post_run(self, command: list[str], **fields: Any) -> dict[str, Any]:
        response = self.caller.post("/v1/apps/web/runs", json={"command": command, **fields})
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.caller.get(f"/v1/apps/web/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_for(self, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if done(run):
                return run
            assert time.monotonic() < deadline, f"run never got there: {run}"
            time.sleep(0.05)

    def wait_ended(self, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_for(run_id, lambda r: r["status"] not in ("queued", "running"), timeout)


def run_world(services: Services, caller: Caller) -> Iterator[RunWorld]:
    app = caller.post("/v1/apps", json={"name": "web"})
    assert app.status_code == 201, app.text
    runtime = InMemoryAppRuntime()
    runs = services.runs
    job = RunJob(
        runs.runs,
        services.deploys.releases,
        services.env_vars,
        runtime,
        tenant_name=services.tenants.name,
        output_max_bytes=services.settings.run_output_max_bytes,
        links=services.databases.links,
        volumes=services.volumes,
    )
    workers = WorkerPool(services.deploys.queue, {RUN_JOB: JobKind(job, job.give_up)}, count=1, poll_s=0.05)
    world = RunWorld(services, caller, app.json()["id"], runtime, job, workers)
    try:
        yield world
    finally:
        world.stop()
