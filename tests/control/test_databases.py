"""Managed databases through the API, with the jobs run in the test against a stand-in runtime
(no Docker here; tests/e2e/test_databases_e2e.py runs the real thing): provisioning, the
state machine, credentials sealed and never listed, reveal scope, quotas, delete/grace/purge."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import select

from control.clock import utcnow
from control.domain.databases import CredentialsUnreadable
from control.jobs.databases import DatabaseRuntime
from control.jobs.workers import WorkerPool
from control.settings import Settings
from control.store.models import DatabaseRow
from runtime.databases import (
    BackupResult,
    DatabaseInstance,
    DatabaseNotHealthy,
    DatabaseSpec,
)
from runtime.databases.backup import verify
from runtime.sandbox import SandboxPolicy
from tests.conftest import Caller


@dataclass
class FakeDatabases:
    """Stands in for runtime.databases.Databases: records what it was asked to do."""

    instances: dict[tuple[str, str], DatabaseInstance] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    calls: list[tuple[DatabaseSpec, SandboxPolicy]] = field(default_factory=list)
    fail: str | None = None

    def provision(self, spec: DatabaseSpec, policy: SandboxPolicy, *, timeout: float) -> DatabaseInstance:
        self.calls.append((spec, policy))
        if self.fail:
            raise DatabaseNotHealthy(self.fail)
        self.volumes.add(spec.resource_name)
        inst = DatabaseInstance(
            spec.tenant,
            spec.name,
            spec.engine,
            spec.id,
            f"cid-{spec.name}",
            spec.resource_name,
            spec.resource_name,
            spec.hostname,
            spec.network,
        )
        self.instances[(spec.tenant, spec.id)] = inst
        return inst

    def find(self, tenant: str, database_id: str) -> DatabaseInstance | None:
        return self.instances.get((tenant, database_id))

    def remove(self, instance: DatabaseInstance, *, purge_volume: bool = False) -> None:
        self.instances.pop((instance.tenant, instance.id), None)
        if purge_volume:
            self.purge_volumes(instance.tenant, instance.id)

    def purge_volumes(self, tenant: str, database_id: str) -> list[str]:
        name = f"moorage-{database_id}"
        self.volumes.discard(name)
        return [name]


@dataclass
class FakeBackups:
    """Stands in for runtime.databases.Backups; restores check the checksum like the real one."""

    content: dict[str, bytes] = field(default_factory=dict)  # database name -> its "data"
    restored: list[tuple[str, bytes]] = field(default_factory=list)

    def backup(self, instance: DatabaseInstance, creds: Any, dest_dir: Path, *, stem: str) -> BackupResult:
        dest_dir.mkdir(parents=True, exist_ok=True)
        data = self.content.get(instance.name, b"data of " + instance.name.encode())
        path = dest_dir / f"{stem}.dump"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        sidecar = path.with_name(path.name + ".sha256")
        sidecar.write_text(f"{digest}  {path.name}\n")
        return BackupResult(path, sidecar, len(data), digest, instance.engine)

    def restore(self, instance: DatabaseInstance, creds: Any, path: Path, *, expected_sha256: str, timeout: float) -> None:
        verify(path, expected_sha256)  # the real runtime's check, before anything is touched
        self.restored.append((instance.name, path.read_bytes()))


class FakeRuntime(DatabaseRuntime):
    def __init__(self, real: DatabaseRuntime) -> None:
        super().__init__(real.app_runtime)
        self.fake_databases, self.fake_backups = FakeDatabases(), FakeBackups()

    @property  # type: ignore[override]
    def databases(self) -> FakeDatabases:  # type: ignore[override]
        return self.fake_databases

    @property  # type: ignore[override]
    def backups(self) -> FakeBackups:  # type: ignore[override]
        return self.fake_backups

    def network(self, tenant: str) -> str:
        return f"moorage-t-{tenant}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Jobs run when a test says so (run_jobs), against the stand-in runtime.
    return settings.with_overrides(job_workers=0, database_max_per_tenant=3, database_max_memory_mb=1024)


@pytest.fixture
def fake(app: Litestar) -> Iterator[FakeRuntime]:
    jobs = app.state.services.databases.jobs
    real, jobs.runtime = jobs.runtime, FakeRuntime(jobs.runtime)
    yield jobs.runtime
    jobs.runtime = real


def run_jobs(app: Litestar) -> int:
    """Run every claimable job to its end, as a worker would (give-up hooks included)."""
    deploys = app.state.services.deploys
    pool: WorkerPool = deploys.workers
    ran = 0
    while (job := deploys.queue.claim("test-worker")) is not None:
        pool.run_one(job, "test-worker")
        ran += 1
    return ran


def create(caller: Caller, app: Litestar | None = None, **body: Any) -> dict[str, Any]:
    r = caller.post("/v1/databases", json={"engine": "postgres", **body})
    assert r.status_code == 202, r.text
    if app is not None:
        run_jobs(app)
        return caller.get(f"/v1/databases/{r.json()['id']}").json()
    return r.json()


def password_of(caller: Caller, db: str) -> str:
    url = caller.get(f"/v1/databases/{db}/connection?reveal=true").json()["url"]
    return url.split(":", 2)[2].split("@", 1)[0]


# --- provisioning -------------------------------------------------------------------------


def test_create_answers_202_then_a_job_provisions_on_the_tenant_network(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    r = tenant.post("/v1/databases", json={"name": "orders", "engine": "postgres"})
    assert r.status_code == 202 and r.headers["location"] == f"/v1/databases/{r.json()['id']}"
    body = r.json()
    assert (body["status"], body["host"], body["port"], body["memory_mb"]) == ("provisioning", "db-orders", 5432, 512)
    assert run_jobs(app) == 1
    assert tenant.get("/v1/databases/orders").json()["status"] == "available"
    [(spec, policy)] = fake.fake_databases.calls
    assert (spec.tenant, spec.network, spec.hostname, spec.engine) == ("acme", "moorage-t-acme", "db-orders", "postgres")
    assert spec.id == body["id"] and spec.object_labels()["db.moorage/id"] == body["id"]
    assert set(spec.labels) == {"org.moorage.control-plane"}  # whose it is, for the reconciler
    assert policy.limits is not None and policy.limits.memory_bytes == 512 * 2**20 and policy.limits.pids >= 1024
    assert len(spec.credentials.password) >= 32 and spec.credentials.password == password_of(tenant, "orders")
    redis = create(tenant, app, name="cache", engine="redis", memory_mb=128)
    assert (redis["status"], redis["port"], redis["memory_mb"]) == ("available", 6379, 128)


def test_a_failed_provision_says_why(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    fake.fake_databases.fail = "postgres orders exited with code 1: initdb: could not create directory"
    db = create(tenant, app, name="orders")
    assert db["status"] == "failed" and "initdb: could not create directory" in db["reason"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name", "engine": "postgres"}, "name"),
        ({"name": "x" * 61, "engine": "postgres"}, "name"),
        ({"name": "ok", "engine": "mysql"}, "engine"),
        ({"name": "ok", "engine": "redis", "memory_mb": 16}, "memory_mb"),
        ({"name": "ok", "engine": "redis", "backup_retention": 0}, "backup_retention"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(tenant: Caller, body: dict[str, Any], field: str) -> None:
    r = tenant.post("/v1/databases", json=body)
    assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], r.text


def test_names_are_unique_and_never_shadow_an_app(tenant: Caller, new_tenant) -> None:
    create(tenant, name="orders")
    assert tenant.post("/v1/databases", json={"name": "orders", "engine": "redis"}).json()["code"] == "name-taken"
    tenant.post("/v1/apps", json={"name": "db-cache"})
    clash = tenant.post("/v1/databases", json={"name": "cache", "engine": "redis"})
    assert clash.status_code == 409 and "db-cache" in clash.json()["detail"]
    assert new_tenant("other").post("/v1/databases", json={"name": "orders", "engine": "postgres"}).status_code == 202


# --- credentials ----------------------------------------------------------------------------


def test_credentials_never_listed_and_revealed_only_to_admin_keys_audited(
    app: Litestar, tenant: Caller, operator: Caller, fake: FakeRuntime
) -> None:
    db = create(tenant, app, name="orders")
    password = password_of(tenant, "orders")
    for path in ("/v1/databases", "/v1/databases/orders", "/v1/databases/orders/connection"):
        assert password not in tenant.get(path).text, path
    masked = tenant.get("/v1/databases/orders/connection").json()
    assert masked["url"] == "postgres://app:***@db-orders:5432/app" and masked["revealed"] is False
    key = operator.post(f"/v1/tenants/{tenant.tenant_id}/keys", json={"scopes": ["deploy"]}).json()
    deployer = Caller(tenant.client, key["token"], key["id"], tenant.tenant_id)
    assert deployer.get("/v1/databases/orders/connection").status_code == 200
    refused = deployer.get("/v1/databases/orders/connection?reveal=true")
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient-scope"
    revealed = tenant.get(f"/v1/databases/{db['id']}/connection?reveal=true").json()
    assert revealed["url"] == f"postgres://app:{password}@db-orders:5432/app" and revealed["revealed"] is True
    audit = tenant.get("/v1/audit").json()["items"]
    reveals = [e for e in audit if e["action"] == "GET /v1/databases/{db}/connection?reveal=true"]
    assert [e["outcome"] for e in reveals] == [200, 200]  # both of the admin's reveals; not the 403
    assert password not in tenant.get("/v1/audit").text


def test_the_password_is_sealed_and_bound_to_its_row(app: Litestar, tenant: Caller) -> None:
    first, second = create(tenant, name="one"), create(tenant, name="two")
    password = password_of(tenant, "one")
    services = app.state.services.databases.databases
    with services.db.write() as session:
        one, two = session.get(DatabaseRow, first["id"]), session.get(DatabaseRow, second["id"])
        assert password.encode() not in one.password_ciphertext
        two.password_ciphertext = one.password_ciphertext  # moved to another row: must not open
    with pytest.raises(CredentialsUnreadable):
        services.credentials(services.load(second["id"]))
    assert tenant.get("/v1/databases/two/connection?reveal=true").status_code == 500


# --- quotas ---------------------------------------------------------------------------------


def test_quotas_count_databases_and_memory_and_say_what_to_delete(
    app: Litestar, tenant: Caller, operator: Caller, fake: FakeRuntime
) -> None:
    create(tenant, name="big", engine="redis", memory_mb=800)
    too_much = tenant.post("/v1/databases", json={"name": "more", "engine": "redis", "memory_mb": 300})
    assert too_much.status_code == 422 and too_much.json()["code"] == "quota-exceeded"
    assert "1024 MiB" in too_much.json()["detail"] and "big (800 MiB)" in too_much.json()["detail"]
    create(tenant, name="a", engine="redis", memory_mb=64)
    create(tenant, name="b", engine="redis", memory_mb=64)
    full = tenant.post("/v1/databases", json={"name": "c", "engine": "redis", "memory_mb": 64})
    assert (
        full.status_code == 422
        and "may run 3 database(s)" in full.json()["detail"]
        and "DELETE /v1/databases" in full.json()["detail"]
    )
    # An operator raises the tenant's limits; a tenant key cannot.
    limits = {"max_databases": 10, "max_memory_mb": 4096}
    assert tenant.request("PUT", f"/v1/tenants/{tenant.tenant_id}/database-limits", json=limits).status_code == 403
    put = operator.request("PUT", f"/v1/tenants/{tenant.tenant_id}/database-limits", json=limits)
    assert put.status_code == 200 and put.json()["max_databases"] == 10 and put.json()["overrides"]["max_memory_mb"] == 4096
    assert operator.get(f"/v1/tenants/{tenant.tenant_id}/database-limits").json()["max_memory_mb"] == 4096
    assert operator.request("PUT", "/v1/tenants/ten_nope/database-limits", json=limits).status_code == 404
    assert tenant.post("/v1/databases", json={"name": "c", "engine": "redis", "memory_mb": 64}).status_code == 202
    # A deleted database no longer counts.
    operator.request("PUT", f"/v1/tenants/{tenant.tenant_id}/database-limits", json={"max_databases": 4})
    assert tenant.post("/v1/databases", json={"name": "d", "engine": "redis", "memory_mb": 64}).status_code == 422
    run_jobs(app)
    assert tenant.delete("/v1/databases/big").status_code == 202
    run_jobs(app)
    assert tenant.post("/v1/databases", json={"name": "d", "engine": "redis", "memory_mb": 64}).status_code == 202


# --- delete, grace, purge --------------------------------------------------------------------


def test_delete_keeps_the_volume_for_the_grace_period_then_purge(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    db = create(tenant, app, name="orders")
    volume = f"moorage-{db['id']}"
    assert volume in fake.fake_databases.volumes
    r = tenant.delete("/v1/databases/orders")
    assert r.status_code == 202 and r.json()["status"] == "deleting"
    assert tenant.delete("/v1/databases/orders").json()["code"] == "database-deleting"
    run_jobs(app)
    gone = tenant.get("/v1/databases/orders").json()
    assert gone["status"] == "deleted" and fake.fake_databases.find("acme", db["id"]) is None
    assert volume in fake.fake_databases.volumes  # kept
    kept_for = (gone["volume_kept_until"], gone["deleted_at"])
    assert kept_for[0] > kept_for[1]
    again = tenant.post("/v1/databases", json={"name": "orders", "engine": "postgres"})
    assert again.status_code == 409 and "?purge=true" in again.json()["detail"]
    assert tenant.delete("/v1/databases/orders").json()["code"] == "database-deleted"
    backups_dir = app.state.services.settings.data_dir / "backups" / tenant.tenant_id / db["id"]
    backups_dir.mkdir(parents=True)
    (backups_dir / "old.pgdump").write_bytes(b"x")
    assert tenant.delete("/v1/databases/orders?purge=true").status_code == 202
    run_jobs(app)
    assert tenant.get("/v1/databases/orders").status_code == 404
    assert volume not in fake.fake_databases.volumes and not backups_dir.exists()
    assert tenant.post("/v1/databases", json={"name": "orders", "engine": "postgres"}).status_code == 202  # the name is free


def test_the_sweep_purges_only_volumes_past_their_grace(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    made = {}
    for name in ("old", "recent"):
        made[name] = create(tenant, app, name=name, engine="redis", memory_mb=64)["id"]
        tenant.delete(f"/v1/databases/{name}")
    run_jobs(app)
    services = app.state.services.databases
    with services.databases.db.write() as session:  # "old" was deleted eight days ago
        row = session.scalar(select(DatabaseRow).where(DatabaseRow.name == "old"))
        row.purge_after, old_id = utcnow() - timedelta(days=1), row.id
    assert services.jobs.sweep() == [old_id]
    assert tenant.get("/v1/databases/old").status_code == 404
    assert tenant.get("/v1/databases/recent").json()["status"] == "deleted"
    assert fake.fake_databases.volumes == {f"moorage-{made['recent']}"}
    assert services.jobs.sweep() == []


def test_a_tenant_with_databases_cannot_be_deleted_until_they_are_purged(
    app: Litestar, tenant: Caller, operator: Caller, fake: FakeRuntime
) -> None:
    db = create(tenant, app, name="keep")
    refused = operator.delete(f"/v1/tenants/{tenant.tenant_id}")
    assert refused.status_code == 409 and "1 database(s)" in refused.json()["detail"]
    assert tenant.delete(f"/v1/databases/{db['id']}?purge=true").status_code == 202
    run_jobs(app)
    assert operator.delete(f"/v1/tenants/{tenant.tenant_id}").status_code == 204
