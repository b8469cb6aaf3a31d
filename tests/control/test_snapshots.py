"""Snapshots and forks through the API, their jobs (and the deploys and database jobs they lead
to) on the runtime port's fake and the database runtime's stand-in (no Docker here;
tests/e2e/test_snapshots.py runs the real thing with runsc and Postgres): what a snapshot
keeps, writers stopped while a volume is read, checksums, a fork with its own app, env
(re-sealed), volumes, databases and release, a corrupt file refused with nothing made,
quotas, the image kept, deletion, and tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import select

from control.bootstrap import Services
from control.domain.deployments import DEPLOY_JOB
from control.jobs.deploy import DeployPipeline
from control.jobs.runtime_fake import FakeContainer, InMemoryAppRuntime
from control.jobs.snapshots import SnapshotJobs
from control.jobs.volumes import RuntimeVolumes
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from control.settings import Settings
from control.store.models import EnvVarRow, SnapshotEnvVarRow
from tests.conftest import Caller
from tests.control.deploy_world import DOCKERFILE
from tests.control.test_databases import FakeRuntime


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        job_workers=0, reconcile_interval_s=0, cron_tick_ms=0, snapshot_max_total_mb=5, kept_releases=0
    )


@dataclass
class World:
    services: Services
    caller: Caller
    runtime: InMemoryAppRuntime
    databases: FakeRuntime
    pool: WorkerPool

    def run_jobs(self) -> int:
        ran = 0
        while (job := self.services.deploys.queue.claim("test-worker")) is not None:
            self.pool.run_one(job, "test-worker")
            ran += 1
        return ran

    def deploy(self, app: str = "web") -> dict[str, Any]:
        services = self.services
        deployments = services.deploys.deployments
        found = services.apps.get(self.caller.tenant_id or "", app)
        deployment_id = deployments.new_id()
        src = deployments.workdir(deployment_id) / "src"
        src.mkdir(parents=True)
        (src / "Dockerfile").write_text(DOCKERFILE)
        deployments.create(found.tenant_id, found, deployment_id, "archive", {})
        self.run_jobs()
        deployment = self.caller.get(f"/v1/apps/{app}/deployments/{deployment_id}").json()
        assert deployment["status"] == "running", deployment
        return deployment  # type: ignore[no-any-return]

    def container(self, app: str) -> FakeContainer:
        [container] = self.runtime.running(tenant="acme", app=app)
        return container

    def snapshot(self, app: str = "web") -> dict[str, Any]:
        r = self.caller.post(f"/v1/apps/{app}/snapshots")
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/snapshots/{r.json()['id']}"
        self.run_jobs()
        return self.caller.get(r.headers["location"]).json()  # type: ignore[no-any-return]

    def fork(self, snapshot_id: str, name: str) -> dict[str, Any]:
        r = self.caller.post(f"/v1/snapshots/{snapshot_id}/fork", json={"name": name})
        assert r.status_code == 202, r.text
        self.run_jobs()
        return self.caller.get(r.headers["location"]).json()  # type: ignore[no-any-return]


@pytest.fixture
def world(app: Litestar, tenant: Caller) -> Iterator[World]:
    services: Services = app.state.services
    runtime, locks = InMemoryAppRuntime(), AppLocks()
    services.volumes.storage = RuntimeVolumes(runtime, locks)
    database_jobs = services.databases.jobs
    real, database_jobs.runtime = database_jobs.runtime, FakeRuntime(database_jobs.runtime)
    deploys = services.deploys
    pipeline = DeployPipeline(
        services.settings,
        deploys.deployments,
        deploys.releases,
        services.env_vars,
        runtime,
        locks,
        services.databases.links,
        services.volumes,
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
    pool = WorkerPool(deploys.queue, kinds, count=0)
    assert tenant.post("/v1/apps", json={"name": "web", "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    assert database_jobs.runtime is not real
    yield World(services, tenant, runtime, database_jobs.runtime, pool)  # type: ignore[arg-type]
    database_jobs.runtime = real


def _app_with_data(world: World) -> dict[str, Any]:
    """web: a volume holding a file, a linked Postgres holding rows, a secret env var; deployed."""
    caller = world.caller
    assert caller.post("/v1/apps/web/volumes", json={"name": "data", "mount_path": "/data", "size_mb": 1}).status_code == 201
    assert caller.post("/v1/databases", json={"name": "orders", "engine": "postgres"}).status_code == 202
    world.run_jobs()
    assert caller.post("/v1/apps/web/links", json={"database": "orders"}).status_code == 201
    assert caller.request("PUT", "/v1/apps/web/env/API_TOKEN", json={"value": "s3cret"}).status_code == 200
    world.databases.fake_backups.content["orders"] = b"PGDMP rows of orders"
    world.deploy()
    world.runtime.write_file(world.container("web").id, "/data/notes.txt", "written by the source")
    return caller.get("/v1/apps/web").json()  # type: ignore[no-any-return]


def test_a_snapshot_keeps_image_env_links_and_checksummed_data_with_writers_stopped(world: World) -> None:
    _app_with_data(world)
    before = world.container("web")
    snapshot = world.snapshot()
    assert snapshot["status"] == "succeeded", snapshot
    assert (snapshot["app"], snapshot["release"], snapshot["env"]) == ("web", "v1", ["API_TOKEN"])
    assert snapshot["links"] == [{"env_name": "DATABASE_URL", "engine": "postgres", "database": "orders"}]
    assert snapshot["volumes"] == [{"name": "data", "mount_path": "/data", "size_mb": 1}]
    assert {f["path"]: f["kind"] for f in snapshot["files"]} == {"volume-data.tar": "volume", "db-DATABASE_URL.dump": "database"}
    folder = world.services.snapshots.directory(world.caller.tenant_id or "", snapshot["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["db-DATABASE_URL.dump", "manifest.json", "volume-data.tar"]
    assert (folder / "db-DATABASE_URL.dump").read_bytes() == b"PGDMP rows of orders"
    import hashlib
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {f["path"]: f["sha256"] for f in snapshot["files"]}
    assert snapshot["manifest_sha256"] == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert snapshot["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    # The volume was read with its writer stopped, and the app serves again afterwards.
    assert world.runtime.exported_while_running == []
    assert snapshot["paused_ms"] is not None
    again = world.container("web")
    assert again.id == before.id and world.runtime.served_by(snapshot["app_id"]) is not None
    # The env var is sealed under the snapshot's own binding: not the app's ciphertext.
    with world.services.db.read() as session:
        kept = session.scalars(select(SnapshotEnvVarRow.ciphertext)).all()
        app_blob = session.scalars(select(EnvVarRow.ciphertext).where(EnvVarRow.name == "API_TOKEN")).all()
    assert len(kept) == 1 and kept != app_blob and b"s3cret" not in kept[0]
    assert world.caller.get("/v1/snapshots").json()["items"][0]["id"] == snapshot["id"]
    assert [s["id"] for s in world.caller.get("/v1/apps/web/snapshots").json()["items"]] == [snapshot["id"]]


def test_a_fork_is_a_new_app_with_its_own_env_volumes_databases_and_the_snapshots_image(world: World) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    fork = world.fork(snapshot["id"], "web-copy")
    assert fork["status"] == "succeeded", fork
    assert fork["volumes"] == ["data"] and [d["env_name"] for d in fork["databases"]] == ["DATABASE_URL"]
    caller = world.caller
    copy = caller.get("/v1/apps/web-copy").json()
    assert (copy["id"], copy["port"], copy["health_check_path"]) == (fork["app_id"], 8080, "/healthz")
    # Its env var, re-sealed under its own binding, opens to the same value.
    assert caller.get("/v1/apps/web-copy/env?reveal=true").json()["vars"][0]["value"] == "s3cret"
    # Its own database, new credentials, restored from the dump; linked under the same name.
    new_db = caller.get(f"/v1/databases/{fork['databases'][0]['id']}").json()
    assert new_db["name"] == "web-copy-orders" and new_db["status"] == "available"
    assert world.databases.fake_backups.restored == [("web-copy-orders", b"PGDMP rows of orders")]
    old_url = caller.get("/v1/databases/orders/connection?reveal=true").json()["url"]
    new_url = caller.get("/v1/databases/web-copy-orders/connection?reveal=true").json()["url"]
    assert old_url != new_url
    # A release of the snapshot's image, no build, serving with its own volume holding the data.
    deployment = caller.get(f"/v1/apps/web-copy/deployments/{fork['deployment_id']}").json()
    assert deployment["source"]["kind"] == "image" and deployment["builder"] is None
    release = caller.get("/v1/apps/web-copy/releases").json()["items"][0]
    assert release["image_id"] == snapshot["image"]
    container = world.container("web-copy")
    assert container.env["DATABASE_URL"] == new_url and container.env["API_TOKEN"] == "s3cret"
    assert world.runtime.read_file(container.id, "/data/notes.txt") == "written by the source"
    source = world.container("web")
    assert {m.volume_id for m in container.mounts}.isdisjoint({m.volume_id for m in source.mounts})
    # A write to the fork does not show in the source.
    world.runtime.write_file(container.id, "/data/notes.txt", "written by the fork")
    assert world.runtime.read_file(source.id, "/data/notes.txt") == "written by the source"
    assert world.runtime.routes[copy["id"]].app == "web-copy"


def test_a_corrupt_file_refuses_the_fork_naming_it_and_nothing_is_made(world: World) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    folder = world.services.snapshots.directory(world.caller.tenant_id or "", snapshot["id"])
    tar = folder / "volume-data.tar"
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    apps_before = world.caller.get("/v1/apps").json()["items"]
    databases_before = world.caller.get("/v1/databases").json()["items"]
    r = world.caller.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "web-copy"})
    assert r.status_code == 409 and r.json()["code"] == "snapshot-corrupt", r.text
    assert "volume-data.tar" in r.json()["detail"]
    assert world.caller.get("/v1/apps").json()["items"] == apps_before
    assert world.caller.get("/v1/databases").json()["items"] == databases_before
    assert world.services.deploys.queue.claim("peek") is None
    # A rewritten manifest does not help: the row keeps the manifest's own checksum.
    import hashlib
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "volume-data.tar":
            entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    again = world.caller.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "web-copy"})
    assert again.status_code == 409 and "manifest.json" in again.json()["detail"]


def test_a_file_corrupted_after_the_fork_was_accepted_fails_the_fork_job_naming_it(world: World) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    r = world.caller.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "web-copy"})
    assert r.status_code == 202
    folder = world.services.snapshots.directory(world.caller.tenant_id or "", snapshot["id"])
    (folder / "db-DATABASE_URL.dump").write_bytes(b"PGDMP tampered")
    world.run_jobs()
    fork = world.caller.get(r.headers["location"]).json()
    assert fork["status"] == "failed" and "db-DATABASE_URL.dump" in fork["reason"], fork
    assert fork["deployment_id"] is None and world.databases.fake_backups.restored == []


def test_an_app_never_deployed_cannot_be_snapshotted(world: World) -> None:
    r = world.caller.post("/v1/apps/web/snapshots")
    assert r.status_code == 409 and r.json()["code"] == "no-release"


def test_the_snapshots_image_is_kept_while_the_snapshot_exists(world: World) -> None:
    world.deploy()
    snapshot = world.snapshot()
    releases = world.services.deploys.releases
    assert snapshot["image"] in releases.kept_images()
    with world.services.db.write() as session:  # the app moved on: its release is no longer current
        from control.store.models import AppRuntimeRow

        session.query(AppRuntimeRow).delete()
    assert snapshot["image"] in releases.kept_images()
    assert world.caller.delete(f"/v1/snapshots/{snapshot['id']}").status_code == 204
    assert snapshot["image"] not in releases.kept_images()
    assert world.caller.get(f"/v1/snapshots/{snapshot['id']}").status_code == 404
    assert not world.services.snapshots.directory(world.caller.tenant_id or "", snapshot["id"]).exists()


def test_snapshots_count_against_the_tenants_snapshot_storage_quota(world: World, operator: Caller) -> None:
    world.deploy()
    assert (
        world.caller.post("/v1/apps/web/volumes", json={"name": "data", "mount_path": "/data", "size_mb": 10}).status_code == 201
    )
    world.deploy()
    world.runtime.write_file(world.container("web").id, "/data/big.bin", "x" * (6 * 2**20))
    over = world.snapshot()
    assert over["status"] == "failed" and "Quota exceeded" in over["reason"], over
    tenant_id = world.caller.tenant_id
    limits = operator.request("PUT", f"/v1/tenants/{tenant_id}/storage-limits", json={"max_snapshot_mb": 0})
    assert limits.status_code == 200 and limits.json()["max_snapshot_mb"] == 0, limits.text
    refused = world.caller.post("/v1/apps/web/snapshots")
    assert refused.status_code == 422 and refused.json()["code"] == "quota-exceeded"
    assert operator.request("PUT", f"/v1/tenants/{tenant_id}/storage-limits", json={"max_snapshot_mb": 50}).status_code == 200
    fits = world.snapshot()
    assert fits["status"] == "succeeded" and fits["size_bytes"] > 6 * 2**20
    usage = operator.get(f"/v1/tenants/{tenant_id}/storage-limits").json()
    assert usage["snapshot_mb"] >= 6


def test_another_tenant_gets_404_and_cannot_fork(world: World, new_tenant) -> None:
    world.deploy()
    snapshot = world.snapshot()
    other = new_tenant("beta", ["admin"])
    assert other.get(f"/v1/snapshots/{snapshot['id']}").status_code == 404
    assert other.get("/v1/snapshots").json()["items"] == []
    assert other.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "stolen"}).status_code == 404
    assert other.delete(f"/v1/snapshots/{snapshot['id']}").status_code == 404
    assert other.post("/v1/apps/web/snapshots").status_code == 404
    assert other.get("/v1/apps").json()["items"] == []


def test_fork_databases_gives_another_app_its_own_restored_databases(world: World) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    assert world.caller.post("/v1/apps", json={"name": "preview"}).status_code == 201
    fork = world.services.snapshots.fork_databases(world.caller.tenant_id or "", snapshot["id"], "preview")
    world.run_jobs()
    done = world.caller.get(f"/v1/snapshots/{snapshot['id']}/forks/{fork.id}").json()
    assert done["status"] == "succeeded" and done["deployment_id"] is None and done["volumes"] == []
    links = world.caller.get("/v1/apps/preview/links").json()["items"]
    assert [(link["env_name"], link["database_name"]) for link in links] == [("DATABASE_URL", "preview-orders")]
    assert world.databases.fake_backups.restored == [("preview-orders", b"PGDMP rows of orders")]


def test_snapshot_bytes_are_metered_as_storage(world: World) -> None:
    _app_with_data(world)
    snapshot = world.snapshot()
    world.services.sampler.run_once()
    usage = world.caller.get("/v1/usage?kind=storage").json()
    assert usage["totals"]["snapshots"]["peak_bytes"] == snapshot["size_bytes"], usage
    [hour] = usage["items"]
    assert hour["snapshots"]["peak_bytes"] == snapshot["size_bytes"]


def test_rotation_finds_and_can_reopen_the_values_a_snapshot_keeps(world: World) -> None:
    from control.domain.rotation import SEALED_COLUMNS
    from control.store.repositories.sealed import SealedValueRepository

    world.deploy()
    assert world.caller.request("PUT", "/v1/apps/web/env/API_TOKEN", json={"value": "s3cret"}).status_code == 200
    world.deploy()
    world.snapshot()
    [column] = [c for c in SEALED_COLUMNS if c.label == "snapshot_env_vars.ciphertext"]
    with world.services.db.read() as session:
        [value] = SealedValueRepository(session, column).batch_not_under("mk-none", after_id="", limit=10)
    # What rotation reseals with: the column's own AAD over its owner columns opens the value.
    assert value.name == "API_TOKEN" and world.services.keyring.open(value.ciphertext, column.aad(*value.owner)) == "s3cret"


def test_deleting_the_source_app_keeps_the_image_its_fork_runs(world: World) -> None:
    from control.jobs.teardown import RuntimeTeardown

    _app_with_data(world)
    snapshot = world.snapshot()
    assert world.fork(snapshot["id"], "web-copy")["status"] == "succeeded"
    source = world.services.apps.get(world.caller.tenant_id or "", "web")
    deployment_ids = [d["id"] for d in world.caller.get("/v1/apps/web/deployments").json()["items"]]
    releases = world.services.deploys.releases
    teardown = RuntimeTeardown(world.runtime, tenant_name=world.services.tenants.name, kept_images=releases.kept_images)
    world.caller.delete(f"/v1/snapshots/{snapshot['id']}")  # not even the snapshot holds it now: the fork's release does
    teardown.app_deleted(source, deployment_ids)
    teardown.drain()
    assert snapshot["image"] in world.runtime.images
    bare = RuntimeTeardown(world.runtime, tenant_name=world.services.tenants.name)  # without the kept images it would go
    world.runtime.remove(world.container("web-copy").id)
    bare.app_deleted(source, deployment_ids)
    bare.drain()
    assert snapshot["image"] not in world.runtime.images


def test_a_fork_over_the_compute_quota_is_filled_but_fails_saying_why(world: World, operator: Caller) -> None:
    world.deploy()
    snapshot = world.snapshot()
    tenant_id = world.caller.tenant_id
    limited = operator.request("PUT", f"/v1/tenants/{tenant_id}/compute-limits", json={"max_replicas": 1})
    assert limited.status_code == 200, limited.text
    fork = world.fork(snapshot["id"], "web-copy")
    assert fork["status"] == "failed" and "not deployed" in fork["reason"] and "Quota exceeded" in fork["reason"], fork
    assert fork["deployment_id"] is None
