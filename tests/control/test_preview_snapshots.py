"""A preview with databases of its own, forked from a snapshot of its app (the previews part's
``snapshot`` option wired to the snapshots part), on the runtime port's fake and the database
runtime's stand-in: its deploy waits until the dumps are restored, it gets new databases
(never the app's own) linked under the same env names, and they go with the preview."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar

from control.bootstrap import Services
from control.domain.deployments import DEPLOY_JOB
from control.domain.previews import DatabasesPending
from control.jobs.deploy import DeployPipeline
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.snapshots import SnapshotJobs
from control.jobs.volumes import RuntimeVolumes
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from control.settings import Settings
from tests.conftest import Caller
from tests.control.deploy_world import DOCKERFILE
from tests.control.test_databases import FakeRuntime
from tests.control.test_snapshots import World, _app_with_data
from tests.git_server import make_repo


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.with_overrides(
        job_workers=0, reconcile_interval_s=0, cron_tick_ms=0, snapshot_max_total_mb=5, git_file_prefixes=str(tmp_path / "repos")
    )


@pytest.fixture
def world(app: Litestar, tenant: Caller) -> Iterator[World]:
    """As tests/control/test_snapshots.py's world, with the server's own wait for forked databases."""
    services: Services = app.state.services
    runtime, locks = InMemoryAppRuntime(), AppLocks()
    services.volumes.storage = RuntimeVolumes(runtime, locks)
    services.deploys.teardown.runtime = runtime
    database_jobs = services.databases.jobs
    real, database_jobs.runtime = database_jobs.runtime, FakeRuntime(database_jobs.runtime)
    deploys = services.deploys
    forks = services.previews.snapshots
    assert forks is not None, "the snapshot option is wired"
    pipeline = DeployPipeline(
        services.settings,
        deploys.deployments,
        deploys.releases,
        services.env_vars,
        runtime,
        locks,
        services.databases.links,
        services.volumes,
        databases_ready=forks.ready,  # type: ignore[attr-defined]
    )
    jobs = SnapshotJobs(
        services.snapshots,
        services.volumes,
        deploys.releases,
        deploys.deployments,
        database_jobs,
        runtime,
        locks,
        services.tenants.name,
    )
    kinds = {DEPLOY_JOB: JobKind(pipeline, pipeline.give_up), **database_jobs.kinds(), **jobs.kinds()}
    jobs.database_wait_s = 0.2
    pool = WorkerPool(deploys.queue, kinds, count=0)
    assert tenant.post("/v1/apps", json={"name": "web", "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    yield World(services, tenant, runtime, database_jobs.runtime, pool)  # type: ignore[arg-type]
    services.deploys.teardown.drain()
    database_jobs.runtime = real


def _until_running(world: World, preview_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        world.run_jobs()
        got = world.caller.get(f"/v1/apps/web/previews/{preview_id}").json()
        if got["status"] in ("running", "failed", "cancelled"):
            return got  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, got
        time.sleep(0.25)


def test_a_preview_with_a_snapshot_gets_its_own_restored_databases_which_go_with_it(world: World, tmp_path: Path) -> None:
    caller = world.caller
    _app_with_data(world)
    snapshot = world.snapshot()
    assert snapshot["status"] == "succeeded", snapshot
    app_links = caller.get("/v1/apps/web/links").json()
    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE})
    created = caller.post(
        "/v1/apps/web/previews", json={"git": {"url": f"file://{repo}", "ref": "main"}, "snapshot": snapshot["id"]}
    )
    assert created.status_code == 202, created.text
    preview = created.json()
    forks = world.services.previews.snapshots
    with pytest.raises(DatabasesPending, match="waiting for its databases to be restored"):
        forks.ready(preview["id"])  # type: ignore[union-attr]  # what its deploy job meets until the fork job is done
    done = _until_running(world, preview["id"])
    log = caller.get(done["deployment"]["logs_url"]).text
    assert done["status"] == "running", (done, log[-2000:])
    forks.ready(preview["id"])  # type: ignore[union-attr]  # filled: nothing to wait for
    own = f"{preview['name']}-orders"
    assert (own, b"PGDMP rows of orders") in world.databases.fake_backups.restored
    [container] = world.runtime.running(tenant="acme", app=preview["name"])
    [parent] = world.runtime.running(tenant="acme", app="web")
    assert container.env["DATABASE_URL"] != parent.env["DATABASE_URL"] and own in container.env["DATABASE_URL"]
    assert caller.get("/v1/apps/web/links").json() == app_links  # the app's links untouched
    assert caller.get(f"/v1/databases/{own}").json()["status"] == "available"

    assert caller.delete(f"/v1/apps/web/previews/{preview['id']}").status_code == 204
    assert caller.get(f"/v1/databases/{own}").json()["status"] in ("deleting", "deleted")
    world.run_jobs()
    assert caller.get("/v1/databases/orders").json()["status"] == "available"  # the app's own stays


def test_an_unknown_snapshot_is_404_and_makes_nothing(world: World, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE})
    body = {"git": {"url": f"file://{repo}", "ref": "main"}, "snapshot": "snp_01jdxxxxxxxxxxxxxxxxxxxxxx"}
    refused = world.caller.post("/v1/apps/web/previews", json=body)
    assert refused.status_code == 404, refused.text
    assert world.caller.get("/v1/apps/web/previews").json() == {"items": []}


def test_a_fork_that_failed_fails_the_previews_deployment_saying_why(world: World, tmp_path: Path) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE})
    body = {"git": {"url": f"file://{repo}", "ref": "main"}, "snapshot": snapshot["id"]}
    preview = world.caller.post("/v1/apps/web/previews", json=body).json()
    services = world.services
    fork = services.snapshots.fork_in_progress(preview["id"])
    assert fork is not None and fork.status == "pending"
    services.snapshots.mark_fork(fork.id, "failed", reason="the dump did not restore")
    done = _until_running(world, preview["id"])
    assert done["status"] == "failed", done
    assert "could not be forked" in done["deployment"]["reason"] and "the dump did not restore" in done["deployment"]["reason"]
