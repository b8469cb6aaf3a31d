"""Backups and restores through the API, jobs run against the stand-in runtime: checksums,
download scope, retention, restore targets, and a corrupt file refused before any restore."""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Litestar

from tests.conftest import Caller
from tests.control import test_databases as shared
from tests.control.test_databases import FakeRuntime, create, run_jobs

settings, fake = shared.settings, shared.fake  # the same fixtures: no job workers, the stand-in runtime


def backup(app: Litestar, caller: Caller, db: str) -> dict[str, Any]:
    r = caller.post(f"/v1/databases/{db}/backups")
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    run_jobs(app)
    return caller.get(r.headers["location"]).json()


def restore(app: Litestar, caller: Caller, db: str, backup_id: str, target: str | None = None) -> dict[str, Any]:
    r = caller.post(f"/v1/databases/{db}/backups/{backup_id}/restore", json={"target": target} if target else {})
    assert r.status_code == 202, r.text
    run_jobs(app)
    return caller.get(r.headers["location"]).json()


def test_backup_needs_an_available_database(tenant: Caller) -> None:
    create(tenant, name="orders")  # still provisioning: no job has run
    r = tenant.post("/v1/databases/orders/backups")
    assert r.status_code == 409 and r.json()["code"] == "database-not-available"


def test_backup_is_checksummed_listed_and_downloaded_by_admins_only(
    app: Litestar, tenant: Caller, operator: Caller, fake: FakeRuntime
) -> None:
    db = create(tenant, app, name="orders")
    fake.fake_backups.content["orders"] = b"PGDMP the rows"
    done = backup(app, tenant, "orders")
    assert done["status"] == "succeeded" and done["size"] == 14
    assert done["checksum"] == "sha256:" + hashlib.sha256(b"PGDMP the rows").hexdigest()
    stored = app.state.services.settings.data_dir / "backups" / tenant.tenant_id / db["id"] / f"{done['id']}.dump"
    assert stored.read_bytes() == b"PGDMP the rows"
    listed = tenant.get("/v1/databases/orders/backups").json()["items"]
    assert [(b["id"], b["size"], b["checksum"]) for b in listed] == [(done["id"], 14, done["checksum"])]
    download = tenant.get(f"/v1/databases/orders/backups/{done['id']}/download")
    assert download.status_code == 200 and download.content == b"PGDMP the rows"
    assert download.headers["x-checksum-sha256"] == done["checksum"].removeprefix("sha256:")
    key = operator.post(f"/v1/tenants/{tenant.tenant_id}/keys", json={"scopes": ["deploy"]}).json()
    deployer = Caller(tenant.client, key["token"], key["id"], tenant.tenant_id)
    assert deployer.get(f"/v1/databases/orders/backups/{done['id']}/download").status_code == 403
    assert deployer.get("/v1/databases/orders/backups").status_code == 200


def test_retention_keeps_the_newest_backups_per_database(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    db = create(tenant, app, name="orders", backup_retention=2)
    made = [backup(app, tenant, "orders")["id"] for _ in range(3)]
    listed = [b["id"] for b in tenant.get("/v1/databases/orders/backups").json()["items"]]
    assert listed == made[1:]
    folder = app.state.services.settings.data_dir / "backups" / tenant.tenant_id / db["id"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{i}.dump" for i in made[1:]] + [f"{i}.dump.sha256" for i in made[1:]]
    )
    assert tenant.get(f"/v1/databases/orders/backups/{made[0]}").status_code == 404


def test_restore_into_the_same_or_another_database_of_the_same_engine(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    create(tenant, app, name="orders", memory_mb=256)
    create(tenant, app, name="staging", memory_mb=256)
    create(tenant, app, name="cache", engine="redis", memory_mb=64)
    done = backup(app, tenant, "orders")
    same = restore(app, tenant, "orders", done["id"])
    other = restore(app, tenant, "orders", done["id"], target="staging")
    assert (same["status"], other["status"]) == ("succeeded", "succeeded")
    assert [name for name, _ in fake.fake_backups.restored] == ["orders", "staging"]
    mismatch = tenant.post(f"/v1/databases/orders/backups/{done['id']}/restore", json={"target": "cache"})
    assert mismatch.status_code == 409 and mismatch.json()["code"] == "engine-mismatch"
    assert tenant.post(f"/v1/databases/orders/backups/{done['id']}/restore", json={"target": "nope"}).status_code == 404


def test_a_corrupt_backup_is_refused_and_nothing_is_restored(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    create(tenant, app, name="orders")
    done = backup(app, tenant, "orders")
    services = app.state.services.databases.backups
    path = services.path_of(services.load(done["id"]))
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())  # a rewritten sidecar does not help
    refused = restore(app, tenant, "orders", done["id"])
    assert refused["status"] == "failed" and refused["finished_at"]
    assert "checksum mismatch" in refused["reason"] and "'orders' was not touched" in refused["reason"]
    assert fake.fake_backups.restored == []
    path.unlink()
    missing = restore(app, tenant, "orders", done["id"])
    assert missing["status"] == "failed" and "is missing; nothing was restored" in missing["reason"]
