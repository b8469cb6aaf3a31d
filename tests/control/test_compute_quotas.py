"""Per-tenant quotas that bite, through the API (no Docker: deployments are accepted and
queued, which is when an app starts holding compute; volumes on the runtime port's fake):
apps, replicas, CPU and memory of running apps, build minutes per day and storage. Each
refusal is 422 ``quota-exceeded`` naming the limit, the use and how to get more, and makes
nothing."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta

import pytest
from litestar import Litestar

from control.clock import utcnow
from control.domain.compute import build_seconds
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.volumes import RuntimeVolumes
from control.jobs.workers import AppLocks
from control.settings import Settings
from control.store.models import DeploymentRow, JobRow
from tests.conftest import Caller
from tests.control.run_world import quiet

DOCKERFILE = b'FROM moorage/busybox:latest\nCMD ["httpd", "-f", "-p", "8080"]\n'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No workers: a deployment stays queued (what these quotas count), nothing is built or started.
    return quiet(settings)


def source() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(DOCKERFILE)
        tar.addfile(info, io.BytesIO(DOCKERFILE))
    return raw.getvalue()


def deploy(tenant: Caller, app: str) -> object:
    return tenant.post(f"/v1/apps/{app}/deployments", content=source(), headers={"Content-Type": "application/gzip"})


def limits_path(tenant: Caller) -> str:
    return f"/v1/tenants/{tenant.tenant_id}/compute-limits"


def jobs(app: Litestar) -> int:
    with app.state.services.db.read() as session:
        return session.query(JobRow).count()


def refused(response: object, limit: str) -> dict[str, object]:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    problem = response.json()  # type: ignore[attr-defined]
    assert problem["code"] == "quota-exceeded" and response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    assert f"({limit})" in problem["detail"] and "/compute-limits" in problem["detail"], problem["detail"]
    return problem  # type: ignore[no-any-return]


def test_compute_limits_are_the_operators_with_defaults_and_use(tenant: Caller, operator: Caller) -> None:
    got = operator.get(limits_path(tenant))
    assert got.status_code == 200, got.text
    assert got.json() == {
        "tenant_id": tenant.tenant_id,
        "max_apps": 20,
        "max_replicas": 20,
        "max_cpu": 8.0,
        "max_memory_mb": 16384,
        "build_minutes_per_day": 600,
        "max_environments": 10,
        "container_cpu": 0.5,
        "container_memory_mb": 256,
        "usage": {
            "apps": 0,
            "replicas": 0,
            "cpu": 0.0,
            "memory_mb": 0,
            "build_minutes_today": 0.0,
            "running": [],
            "environments": 0,
            "environment_cpu": 0.0,
            "environment_memory_mb": 0,
        },
        "overrides": {
            "max_apps": None,
            "max_replicas": None,
            "max_cpu": None,
            "max_memory_mb": None,
            "build_minutes_per_day": None,
            "max_environments": None,
        },
    }
    assert tenant.get(limits_path(tenant)).status_code == 403
    assert tenant.request("PUT", limits_path(tenant), json={"max_apps": 99}).status_code == 403
    put = operator.request("PUT", limits_path(tenant), json={"max_cpu": 1.5, "max_replicas": 3})
    assert put.status_code == 200 and (put.json()["max_cpu"], put.json()["max_replicas"]) == (1.5, 3)
    assert put.json()["overrides"]["max_cpu"] == 1.5 and put.json()["max_apps"] == 20
    assert operator.request("PUT", "/v1/tenants/ten_nope/compute-limits", json={}).status_code == 404
    assert operator.request("PUT", limits_path(tenant), json={"max_apps": -1}).status_code in (400, 422)
    assert operator.request("PUT", limits_path(tenant), json={"max_pods": 1}).status_code in (400, 422)
    # A full replacement: what is left out goes back to the default.
    assert operator.request("PUT", limits_path(tenant), json={}).json()["max_cpu"] == 8.0


def test_a_deploy_over_the_cpu_quota_is_refused_and_makes_nothing(app: Litestar, tenant: Caller, operator: Caller) -> None:
    operator.request("PUT", limits_path(tenant), json={"max_cpu": 1.0})
    assert tenant.post("/v1/apps", json={"name": "api", "replicas": 2}).status_code == 201
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201  # an app never deployed holds nothing
    assert deploy(tenant, "api").status_code == 202  # 2 x 0.5 CPU: exactly the limit
    before = jobs(app)
    problem = refused(deploy(tenant, "web"), "max_cpu")
    assert "1.5 CPU" in problem["detail"] and "limit of 1 CPU" in problem["detail"] and "api (2)" in problem["detail"]  # type: ignore[operator]
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == [] and jobs(app) == before
    use = operator.get(limits_path(tenant)).json()["usage"]
    assert (use["replicas"], use["cpu"], use["running"]) == (2, 1.0, [{"app": "api", "replicas": 2}])
    # Raised by an operator, the same deploy goes.
    operator.request("PUT", limits_path(tenant), json={"max_cpu": 1.5})
    assert deploy(tenant, "web").status_code == 202


def test_a_deploy_over_the_memory_quota_is_refused_and_makes_nothing(app: Litestar, tenant: Caller, operator: Caller) -> None:
    operator.request("PUT", limits_path(tenant), json={"max_memory_mb": 600})
    for name in ("a", "b", "c"):
        assert tenant.post("/v1/apps", json={"name": name}).status_code == 201
    assert deploy(tenant, "a").status_code == 202 and deploy(tenant, "b").status_code == 202  # 512 MiB
    assert deploy(tenant, "a").status_code == 202  # a redeploy adds nothing
    before = jobs(app)
    problem = refused(deploy(tenant, "c"), "max_memory_mb")
    assert "768 MiB" in problem["detail"] and "600 MiB" in problem["detail"]  # type: ignore[operator]
    assert tenant.get("/v1/apps/c/deployments").json()["items"] == [] and jobs(app) == before


def test_a_fourth_replica_over_a_three_replica_limit_is_refused(tenant: Caller, operator: Caller) -> None:
    operator.request("PUT", limits_path(tenant), json={"max_replicas": 3})
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert deploy(tenant, "web").status_code == 202
    assert tenant.patch("/v1/apps/web", json={"replicas": 3}).status_code == 200
    problem = refused(tenant.patch("/v1/apps/web", json={"replicas": 4}), "max_replicas")
    assert "4 replica(s)" in problem["detail"] and "limit of 3" in problem["detail"]  # type: ignore[operator]
    assert tenant.get("/v1/apps/web").json()["replicas"] == 3  # unchanged
    assert tenant.patch("/v1/apps/web", json={"replicas": 2}).status_code == 200  # scaling down always goes
    # Across apps: a second app's first deploy would be the 4th container.
    assert tenant.patch("/v1/apps/web", json={"replicas": 3}).status_code == 200
    assert tenant.post("/v1/apps", json={"name": "api"}).status_code == 201
    refused(deploy(tenant, "api"), "max_replicas")
    # A lower limit stops nothing that runs: only the next scale-up or deploy.
    operator.request("PUT", limits_path(tenant), json={"max_replicas": 1})
    assert tenant.get("/v1/apps/web").json()["replicas"] == 3 and deploy(tenant, "web").status_code == 202


def test_apps_past_max_apps_are_refused(tenant: Caller, operator: Caller) -> None:
    operator.request("PUT", limits_path(tenant), json={"max_apps": 1})
    assert tenant.post("/v1/apps", json={"name": "one"}).status_code == 201
    refused(tenant.post("/v1/apps", json={"name": "two"}), "max_apps")
    assert [a["name"] for a in tenant.get("/v1/apps").json()["items"]] == ["one"]


def test_a_build_over_the_days_build_minutes_is_refused(app: Litestar, tenant: Caller, operator: Caller) -> None:
    operator.request("PUT", limits_path(tenant), json={"build_minutes_per_day": 2})
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    first = deploy(tenant, "web")
    assert first.status_code == 202
    now = utcnow()
    history = [
        {"status": "queued", "at": (now - timedelta(minutes=4)).isoformat()},
        {"status": "building", "at": (now - timedelta(minutes=3)).isoformat()},
        {"status": "failed", "at": (now - timedelta(seconds=30)).isoformat(), "reason": "build failed"},
    ]
    with app.state.services.db.write() as session:  # a build of 2.5 minutes today, ended
        row = session.get(DeploymentRow, first.json()["id"])
        row.status, row.transitions = "failed", json.dumps(history)
    if now - timedelta(minutes=3) < now.replace(hour=0, minute=0, second=0, microsecond=0):
        pytest.skip("too close to midnight UTC: part of the build counts for yesterday")
    assert operator.get(limits_path(tenant)).json()["usage"]["build_minutes_today"] == 2.5
    problem = refused(deploy(tenant, "web"), "build_minutes_per_day")
    assert "2.5 minute(s) today" in problem["detail"] and "rollback" in problem["detail"]  # type: ignore[operator]
    assert len(tenant.get("/v1/apps/web/deployments").json()["items"]) == 1


def test_build_seconds_count_only_building_and_only_since_midnight() -> None:
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)

    def at(minutes: float) -> str:
        return (midnight + timedelta(minutes=minutes)).isoformat()

    retried = [{"status": "building", "at": at(1)}, {"status": "building", "at": at(2)}, {"status": "releasing", "at": at(4)}]
    assert build_seconds(retried, midnight, midnight + timedelta(hours=1)) == 180
    yesterday = [{"status": "building", "at": at(-5)}, {"status": "failed", "at": at(5)}]
    assert build_seconds(yesterday, midnight, midnight + timedelta(hours=1)) == 300
    still = [{"status": "building", "at": at(10)}]
    assert build_seconds(still, midnight, midnight + timedelta(minutes=12)) == 120
    rollback = [{"status": "queued", "at": at(1)}, {"status": "releasing", "at": at(2)}, {"status": "running", "at": at(3)}]
    assert build_seconds(rollback, midnight, midnight + timedelta(hours=1)) == 0


def test_a_volume_over_the_storage_quota_is_refused_and_makes_nothing(tenant: Caller, operator: Caller, app: Litestar) -> None:
    fake = InMemoryAppRuntime()
    app.state.services.volumes.storage = RuntimeVolumes(fake, AppLocks())
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    operator.request("PUT", f"/v1/tenants/{tenant.tenant_id}/storage-limits", json={"max_total_mb": 100})
    assert tenant.post("/v1/apps/web/volumes", json={"name": "a", "mount_path": "/a", "size_mb": 60}).status_code == 201
    over = tenant.post("/v1/apps/web/volumes", json={"name": "b", "mount_path": "/b", "size_mb": 41})
    assert over.status_code == 422 and over.json()["code"] == "quota-exceeded" and "100 MiB" in over.json()["detail"]
    assert len(fake.volumes) == 1 and [v["name"] for v in tenant.get("/v1/apps/web/volumes").json()["items"]] == ["a"]


def test_two_first_deploys_at_once_cannot_both_fit(app: Litestar, tenant: Caller, operator: Caller) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from control.domain.errors import QuotaExceeded

    operator.request("PUT", limits_path(tenant), json={"max_cpu": 0.5})  # one container
    for name in ("a", "b"):
        assert tenant.post("/v1/apps", json={"name": name}).status_code == 201
    deployments = app.state.services.deploys.deployments
    targets = [deployments.app(tenant.tenant_id, name) for name in ("a", "b")]

    def first_deploy(target: object) -> str:
        try:
            deployments.create(tenant.tenant_id, target, deployments.new_id(), "archive", {})
        except QuotaExceeded:
            return "refused"
        return "accepted"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(first_deploy, targets))
    assert outcomes == ["accepted", "refused"]
    assert operator.get(limits_path(tenant)).json()["usage"]["replicas"] == 1
