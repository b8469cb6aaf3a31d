"""App volumes through the API on the runtime port's fake (no Docker here; tests/e2e/test_volumes.py
runs the real thing): validation naming the field, names unique per app, paths that do not
overlap, per-tenant storage quotas with nothing half-made, Idempotency-Key replays, deletes,
and apps with volumes deleted only with ?purge=true."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.volumes import RuntimeVolumes
from control.jobs.workers import AppLocks
from runtime.volumes import VolumeHostError
from tests.conftest import Caller


@pytest.fixture
def fake(app: Litestar) -> InMemoryAppRuntime:
    """The app's volume storage on the fake: what a create made is in ``fake.volumes``."""
    runtime = InMemoryAppRuntime()
    app.state.services.volumes.storage = RuntimeVolumes(runtime, AppLocks())
    return runtime


@pytest.fixture
def web(tenant: Caller, fake: InMemoryAppRuntime) -> str:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    return "web"


def _create(tenant: Caller, body: dict[str, Any], app: str = "web", **kwargs: Any) -> Any:
    return tenant.post(f"/v1/apps/{app}/volumes", json=body, **kwargs)


def test_a_volume_is_created_listed_read_and_deleted(tenant: Caller, web: str, fake: InMemoryAppRuntime) -> None:
    r = _create(tenant, {"name": "data", "mount_path": "/app/instance", "size_mb": 100})
    assert r.status_code == 201, r.text
    volume = r.json()
    assert set(volume) >= {"id", "name", "mount_path", "size_mb", "used_mb", "status", "created_at"}
    assert (volume["name"], volume["mount_path"], volume["size_mb"], volume["used_mb"], volume["status"]) == (
        "data",
        "/app/instance",
        100,
        None,
        "ready",
    )
    assert volume["id"].startswith("vol_") and volume["quota"] in ("enforced", "measured")
    made = fake.volumes[volume["id"]]
    assert (made.tenant, made.app, made.size_mb, made.enforced) == ("acme", "web", 100, volume["quota"] == "enforced")
    assert tenant.get("/v1/apps/web/volumes").json() == {"items": [volume]}
    assert tenant.get("/v1/apps/web/volumes/data").json() == volume
    assert tenant.get(f"/v1/apps/web/volumes/{volume['id']}").json() == volume
    assert tenant.delete("/v1/apps/web/volumes/data").status_code == 204
    assert fake.volumes == {}
    assert tenant.get("/v1/apps/web/volumes/data").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Data", "mount_path": "/data", "size_mb": 1}, "name"),
        ({"name": "data\n", "mount_path": "/data", "size_mb": 1}, "name"),
        ({"name": "data", "mount_path": "data", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/data/", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/app/../data", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/app/./data", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/app//data", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/data:ro", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/data\n", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/proc", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/sys/fs", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/dev/shm", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/etc/app", "size_mb": 1}, "mount_path"),
        ({"name": "data", "mount_path": "/data", "size_mb": 0}, "size_mb"),
        ({"name": "data", "mount_path": "/data", "size_mb": 10241}, "size_mb"),  # over MOORAGE_VOLUME_MAX_SIZE_MB
        ({"name": "data", "mount_path": "/data"}, "size_mb"),
    ],
)
def test_an_invalid_volume_is_422_naming_the_field_and_makes_nothing(
    tenant: Caller, web: str, fake: InMemoryAppRuntime, body: dict[str, Any], field: str
) -> None:
    r = _create(tenant, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert any(
        field in (e["field"], e["message"]) or f"$.{field}" in e["message"] or f"`{field}`" in e["message"] for e in errors
    ), r.text
    assert fake.volumes == {} and tenant.get("/v1/apps/web/volumes").json()["items"] == []


def test_the_etc_like_prefix_only_refuses_the_directory_itself(tenant: Caller, web: str) -> None:
    assert _create(tenant, {"name": "data", "mount_path": "/etcetera", "size_mb": 1}).status_code == 201


def test_names_are_unique_per_app_and_paths_never_overlap(tenant: Caller, web: str, fake: InMemoryAppRuntime) -> None:
    assert _create(tenant, {"name": "data", "mount_path": "/srv/data", "size_mb": 1}).status_code == 201
    taken = _create(tenant, {"name": "data", "mount_path": "/other", "size_mb": 1})
    assert taken.status_code == 409 and taken.json()["code"] == "name-taken"
    for path in ("/srv/data", "/srv", "/srv/data/inner"):
        r = _create(tenant, {"name": "more", "mount_path": path, "size_mb": 1})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "mount_path", r.text
        assert "overlaps volume 'data' at /srv/data" in r.json()["detail"]
    assert _create(tenant, {"name": "more", "mount_path": "/srv/database", "size_mb": 1}).status_code == 201
    assert tenant.post("/v1/apps", json={"name": "api"}).status_code == 201
    assert _create(tenant, {"name": "data", "mount_path": "/srv/data", "size_mb": 1}, app="api").status_code == 201
    assert len(fake.volumes) == 3


def test_an_unknown_app_is_404(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    assert _create(tenant, {"name": "data", "mount_path": "/data", "size_mb": 1}, app="nope").status_code == 404
    assert tenant.get("/v1/apps/nope/volumes").status_code == 404
    assert fake.volumes == {}


def test_a_create_is_replayed_for_the_same_idempotency_key_and_makes_one_volume(
    tenant: Caller, web: str, fake: InMemoryAppRuntime
) -> None:
    body = {"name": "data", "mount_path": "/data", "size_mb": 5}
    first = _create(tenant, body, headers={"Idempotency-Key": "vol-1"})
    again = _create(tenant, body, headers={"Idempotency-Key": "vol-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    assert len(fake.volumes) == 1
    other = _create(tenant, {**body, "size_mb": 6}, headers={"Idempotency-Key": "vol-1"})
    assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused"


def test_storage_limits_are_the_operators_and_a_volume_over_them_makes_nothing(
    tenant: Caller, operator: Caller, web: str, fake: InMemoryAppRuntime
) -> None:
    path = f"/v1/tenants/{tenant.tenant_id}/storage-limits"
    limits = operator.get(path).json()
    assert limits == {
        "tenant_id": tenant.tenant_id,
        "max_volumes": 10,
        "max_total_mb": 20480,
        "volumes": 0,
        "total_mb": 0,
        "max_snapshot_mb": 20480,
        "snapshot_mb": 0.0,
        "overrides": {"max_volumes": None, "max_total_mb": None, "max_snapshot_mb": None},
    }
    assert tenant.get(path).status_code == 403
    assert operator.request("PUT", path, json={"max_volumes": 2, "max_total_mb": 100}).status_code == 200
    assert _create(tenant, {"name": "a", "mount_path": "/a", "size_mb": 60}).status_code == 201
    over = _create(tenant, {"name": "b", "mount_path": "/b", "size_mb": 41})
    assert over.status_code == 422 and over.json()["code"] == "quota-exceeded", over.text
    assert "100 MiB" in over.json()["detail"] and "web/a (60 MiB)" in over.json()["detail"]
    assert over.headers["content-type"].startswith("application/problem+json")
    assert len(fake.volumes) == 1 and "create_volume" in fake.calls  # the refused one was never made
    assert _create(tenant, {"name": "b", "mount_path": "/b", "size_mb": 40}).status_code == 201
    third = _create(tenant, {"name": "c", "mount_path": "/c", "size_mb": 1})
    assert third.status_code == 422 and "may have 2 volume(s) and has 2" in third.json()["detail"]
    assert len(fake.volumes) == 2
    after = operator.get(path).json()
    assert (after["volumes"], after["total_mb"], after["overrides"]) == (
        2,
        100,
        {"max_volumes": 2, "max_total_mb": 100, "max_snapshot_mb": None},
    )
    assert operator.request("PUT", path, json={"max_volumes": -1}).status_code in (400, 422)
    assert operator.get("/v1/tenants/ten_nope/storage-limits").status_code == 404


def test_storage_the_host_cannot_make_is_503_and_leaves_no_volume(tenant: Caller, web: str, fake: InMemoryAppRuntime) -> None:
    def refuse() -> None:
        raise VolumeHostError("losetup was refused: enforced volumes need a control plane running as root")

    fake.before("create_volume", refuse)
    r = _create(tenant, {"name": "data", "mount_path": "/data", "size_mb": 1})
    assert r.status_code == 503 and r.json()["code"] == "volume-storage-unavailable", r.text
    assert "root" in r.json()["detail"] and r.headers.get("retry-after")
    assert tenant.get("/v1/apps/web/volumes").json()["items"] == []


def test_an_app_with_volumes_is_deleted_only_with_purge(tenant: Caller, web: str, fake: InMemoryAppRuntime) -> None:
    assert _create(tenant, {"name": "data", "mount_path": "/data", "size_mb": 1}).status_code == 201
    refused = tenant.delete("/v1/apps/web")
    assert refused.status_code == 409 and refused.json()["code"] == "app-has-volumes", refused.text
    assert "'data'" in refused.json()["detail"] and "?purge=true" in refused.json()["detail"]
    assert tenant.get("/v1/apps/web").status_code == 200
    assert tenant.delete("/v1/apps/web?purge=true").status_code == 204
    assert tenant.get("/v1/apps/web").status_code == 404
    assert tenant.get("/v1/apps/web/volumes").status_code == 404


def test_another_tenant_sees_no_volume_of_this_one(tenant: Caller, new_tenant: Any, web: str, fake: InMemoryAppRuntime) -> None:
    volume = _create(tenant, {"name": "data", "mount_path": "/data", "size_mb": 1}).json()
    other = new_tenant("other", ["admin"])
    assert other.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert other.get("/v1/apps/web/volumes").json()["items"] == []
    for path in ("/v1/apps/web/volumes/data", f"/v1/apps/web/volumes/{volume['id']}", f"/v1/apps/{web}/volumes/{volume['id']}"):
        assert other.get(path).status_code == 404
        assert other.delete(path + "?force=true").status_code == 404
    assert list(fake.volumes) == [volume["id"]]
