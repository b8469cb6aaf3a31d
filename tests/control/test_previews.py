"""Preview deployments through the API, their jobs run by the real deploy pipeline on the
runtime port's fake (tests/e2e/test_previews.py runs the real thing through Traefik): a preview
is an app of its own kind at its own host, copies its app's env (sealed again) with
overrides, gets no volumes, links or domains, never touches its app, is deleted by DELETE,
with its app and at its TTL (by the reconciler's pass, also after a restart), counts against
the compute quotas, and is 404 to another tenant."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from control.bootstrap import Services, bootstrap
from control.clock import utcnow
from control.domain.deployments import DEPLOY_JOB
from control.domain.env import value_aad
from control.domain.errors import NotFound
from control.jobs.deploy import DeployPipeline
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.volumes import RuntimeVolumes
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from control.security.keyring import KeyringError
from control.settings import Settings
from control.store.models import AppRow, EnvVarRow
from control.store.repositories.apps import AppRepository
from tests.conftest import Caller
from tests.git_server import make_repo

DOCKERFILE = 'FROM moorage/python:3-bookworm\nCMD ["python3", "-m", "http.server"]\n'
PREVIEW_NAME = re.compile(r"web--[a-z0-9]{6}")


def source(text: str = "app") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, body in (("Dockerfile", DOCKERFILE), ("index.html", text)):
            info = tarfile.TarInfo(name)
            info.size = len(body.encode())
            tar.addfile(info, io.BytesIO(body.encode()))
    return raw.getvalue()


GZIP = {"Content-Type": "application/gzip"}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Nothing runs on its own: the test runs the jobs and the reconciler's passes."""
    return settings.with_overrides(
        job_workers=0, reconcile_interval_s=0, cron_tick_ms=0, git_file_prefixes=str(tmp_path / "repos"), preview_max_per_app=3
    )


@dataclass
class World:
    services: Services
    runtime: InMemoryAppRuntime
    workers: WorkerPool
    tenant: Caller

    def run_jobs(self) -> None:
        """Every queued job, as the server's workers would run them."""
        queue = self.services.deploys.queue
        while (job := queue.claim("worker-1")) is not None:
            self.workers.run_one(job, "worker-1")

    def settle(self) -> None:
        self.services.deploys.teardown.drain()

    def preview(self, body: dict[str, Any] | None = None, app: str = "web", **kwargs: Any) -> httpx.Response:
        if body is None:
            return self.tenant.post(f"/v1/apps/{app}/previews", content=source("preview"), headers=GZIP, **kwargs)
        return self.tenant.post(f"/v1/apps/{app}/previews", json=body, **kwargs)

    def app_rows(self) -> list[tuple[str, str]]:
        with self.services.db.read() as session:
            return sorted((row.name, row.kind) for row in session.query(AppRow))


@pytest.fixture
def world(app: Litestar, tenant: Caller) -> Iterator[World]:
    """Tenant acme's app ``web`` (port 8080, health /healthz), deployed from an upload."""
    services: Services = app.state.services
    runtime = InMemoryAppRuntime()
    locks = AppLocks()
    services.volumes.storage = RuntimeVolumes(runtime, locks)
    services.deploys.teardown.runtime = runtime
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
    workers = WorkerPool(deploys.queue, {DEPLOY_JOB: JobKind(pipeline, pipeline.give_up)}, count=0)
    made = World(services, runtime, workers, tenant)
    assert tenant.post("/v1/apps", json={"name": "web", "health_check_path": "/healthz"}).status_code == 201
    assert tenant.request("PUT", "/v1/apps/web/env/SHARED", json={"value": "from-app"}).status_code == 200
    assert tenant.request("PUT", "/v1/apps/web/env/DROPPED", json={"value": "app-only"}).status_code == 200
    deployed = tenant.post("/v1/apps/web/deployments", content=source("app"), headers=GZIP)
    assert deployed.status_code == 202, deployed.text
    made.run_jobs()
    assert tenant.get(f"/v1/apps/web/deployments/{deployed.json()['id']}").json()["status"] == "running"
    yield made
    made.settle()


def _created(world: World, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    preview: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/apps/{preview['app_id']}/previews/{preview['id']}"
    world.run_jobs()
    return preview


def test_a_preview_of_an_upload_runs_at_its_own_host_and_is_listed_by_id_name_and_slug(world: World) -> None:
    tenant = world.tenant
    response = world.preview(params={"ttl_s": 600})
    preview = _created(world, response)
    assert PREVIEW_NAME.fullmatch(preview["name"]), preview["name"]
    assert preview["id"].startswith("app_") and preview["app"] == "web"
    assert preview["url"] == f"http://{preview['name']}.acme.apps.test"
    assert preview["deployment"]["status"] == "queued" and preview["status"] == "queued"  # as it was accepted
    expires = preview["expires_at"]
    got = tenant.get(f"/v1/apps/web/previews/{preview['id']}")
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "running" and got.json()["expires_at"] == expires
    slug = preview["name"].removeprefix("web--")
    for ref in (preview["name"], slug):
        assert tenant.get(f"/v1/apps/web/previews/{ref}").json()["id"] == preview["id"]
    assert [p["id"] for p in tenant.get("/v1/apps/web/previews").json()["items"]] == [preview["id"]]
    route = world.runtime.routes[preview["id"]]
    assert (route.tenant, route.app, route.port) == ("acme", preview["name"], 8080)
    [container] = world.runtime.running(tenant="acme", app=preview["name"])
    assert world.runtime.served_by(preview["id"]) is not None and container.env["PORT"] == "8080"
    # Its deployments and logs are readable, read-only, at its own id.
    deployment = preview["deployment"]
    assert tenant.get(f"/v1/apps/{preview['id']}/deployments/{deployment['id']}").json()["status"] == "running"
    log = tenant.get(deployment["logs_url"])
    assert log.status_code == 200 and "running v1" in log.text


def test_the_app_endpoints_do_not_find_a_preview(world: World) -> None:
    tenant = world.tenant
    preview = _created(world, world.preview())
    assert [a["name"] for a in tenant.get("/v1/apps").json()["items"]] == ["web"]
    for ref in (preview["id"], preview["name"]):
        assert tenant.get(f"/v1/apps/{ref}").status_code == 404
        assert tenant.patch(f"/v1/apps/{ref}", json={"replicas": 3}).status_code == 404
        assert tenant.delete(f"/v1/apps/{ref}").status_code == 404
        assert tenant.get(f"/v1/apps/{ref}/env").status_code == 404
        assert tenant.request("PUT", f"/v1/apps/{ref}/env/X", json={"value": "y"}).status_code == 404
        assert tenant.post(f"/v1/apps/{ref}/deployments", content=source(), headers=GZIP).status_code == 404
        assert tenant.post(f"/v1/apps/{ref}/volumes", json={"name": "d", "mount_path": "/d", "size_mb": 1}).status_code == 404
        assert tenant.post(f"/v1/apps/{ref}/domains", json={"hostname": "p.example.com"}).status_code == 404
        assert tenant.post(f"/v1/apps/{ref}/runs", json={"command": ["true"]}).status_code == 404
        assert (
            tenant.post(f"/v1/apps/{ref}/previews", content=source(), headers=GZIP).status_code == 404
        )  # no preview of a preview
    assert world.runtime.served_by(preview["id"]) is not None  # and nothing of it changed


def test_a_preview_never_touches_its_apps_release_route_volumes_env_or_databases(world: World, tmp_path: Path) -> None:
    tenant, services = world.tenant, world.services
    database = tenant.post("/v1/databases", json={"name": "main-db", "engine": "postgres"}).json()
    services.databases.databases.mark(database["id"], "available", expect=("provisioning",))  # as its job would
    services.deploys.queue.cancel_queued(database["id"])
    assert tenant.post("/v1/apps/web/links", json={"database": "main-db"}).status_code == 201
    assert tenant.post("/v1/apps/web/volumes", json={"name": "data", "mount_path": "/data", "size_mb": 10}).status_code == 201
    assert tenant.post("/v1/apps/web/deployments", content=source("app v2"), headers=GZIP).status_code == 202
    world.run_jobs()  # the app runs v2 with its link and volume
    before = {
        "app": tenant.get("/v1/apps/web").json(),
        "env": tenant.get("/v1/apps/web/env?reveal=true").json(),
        "releases": tenant.get("/v1/apps/web/releases").json(),
        "volumes": tenant.get("/v1/apps/web/volumes").json(),
        "links": tenant.get("/v1/apps/web/links").json(),
        "route": world.runtime.routes[tenant.get("/v1/apps/web").json()["id"]],
        "containers": sorted(c.id for c in world.runtime.running(tenant="acme", app="web")),
    }
    [app_container] = world.runtime.running(tenant="acme", app="web")
    assert "DATABASE_URL" in app_container.env and app_container.mounts

    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE, "index.html": "from git"})
    body = {
        "git": {"url": f"file://{repo}", "ref": "main"},
        "ttl_s": 300,
        "env": {"SHARED": "override", "EXTRA": "1", "DROPPED": None},
    }
    preview = _created(world, world.preview(body))
    assert preview["deployment"]["source"] == {"kind": "git", "url": f"file://{repo}", "ref": "main"}
    assert tenant.get(f"/v1/apps/web/previews/{preview['id']}").json()["status"] == "running"
    [container] = world.runtime.running(tenant="acme", app=preview["name"])
    assert {k: v for k, v in container.env.items() if k != "PORT"} == {"SHARED": "override", "EXTRA": "1"}
    assert container.mounts == ()  # no volumes
    assert "DATABASE_URL" not in container.env  # no links: never the app's own databases
    with services.db.read() as session:
        row = AppRepository(session, tenant.tenant_id, previews=True).get(preview["id"])  # type: ignore[arg-type]
    assert row is not None and (row.kind, row.replicas, row.parent_app_id) == ("preview", 1, before["app"]["id"])
    assert services.databases.links.list(tenant.tenant_id, before["app"]["id"])  # the app's link is there
    assert services.volumes.for_app(preview["id"]) == []

    after = {
        "app": tenant.get("/v1/apps/web").json(),
        "env": tenant.get("/v1/apps/web/env?reveal=true").json(),
        "releases": tenant.get("/v1/apps/web/releases").json(),
        "volumes": tenant.get("/v1/apps/web/volumes").json(),
        "links": tenant.get("/v1/apps/web/links").json(),
        "route": world.runtime.routes[before["app"]["id"]],
        "containers": sorted(c.id for c in world.runtime.running(tenant="acme", app="web")),
    }
    assert after == before
    # And deleting the preview leaves the app as it was too.
    assert tenant.delete(f"/v1/apps/web/previews/{preview['id']}").status_code == 204
    world.settle()
    assert sorted(c.id for c in world.runtime.running(tenant="acme", app="web")) == before["containers"]
    assert world.runtime.routes[before["app"]["id"]] == before["route"]
    assert tenant.get("/v1/apps/web/env?reveal=true").json() == before["env"]


def test_the_env_is_sealed_again_under_the_previews_own_binding(world: World) -> None:
    tenant, services = world.tenant, world.services
    preview = _created(world, world.preview())
    app_id = tenant.get("/v1/apps/web").json()["id"]
    with services.db.read() as session:
        rows = {(r.app_id, r.name): r.ciphertext for r in session.query(EnvVarRow)}
    assert set(rows) == {(app_id, "SHARED"), (app_id, "DROPPED"), (preview["id"], "SHARED"), (preview["id"], "DROPPED")}
    keyring, tenant_id = services.keyring, tenant.tenant_id
    assert tenant_id is not None
    for name in ("SHARED", "DROPPED"):
        ours, theirs = rows[(preview["id"], name)], rows[(app_id, name)]
        assert ours != theirs  # never the ciphertext copied
        assert keyring.open(ours, value_aad(tenant_id, preview["id"], name)) == keyring.open(
            theirs, value_aad(tenant_id, app_id, name)
        )
        with pytest.raises(KeyringError):  # bound to the preview: the app's binding does not open it
            keyring.open(ours, value_aad(tenant_id, app_id, name))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"git": {"url": "https://example.com/r.git"}, "ttl_s": 0}, "ttl_s"),
        ({"git": {"url": "https://example.com/r.git"}, "ttl_s": 7 * 86400 + 1}, "ttl_s"),
        ({"git": {"url": "https://example.com/r.git"}, "env": {"1BAD": "x"}}, "env.1BAD"),
        ({"git": {"url": "https://example.com/r.git"}, "env": {"PORT": "1"}}, "env.PORT"),
        ({"git": {"url": "ssh://example.com/r.git"}}, "git.url"),
    ],
)
def test_a_refused_preview_names_the_field_and_makes_nothing(world: World, body: dict[str, Any], field: str) -> None:
    rows, jobs = world.app_rows(), world.services.deploys.queue.depth().queued
    response = world.preview(body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in problem.get("errors", [])], problem
    assert world.app_rows() == rows and world.services.deploys.queue.depth().queued == jobs


def test_other_refusals_are_problems_and_make_nothing(world: World) -> None:
    tenant = world.tenant
    rows = world.app_rows()
    assert world.preview(params={"ttl_s": 0}).status_code == 422
    assert world.preview({"git": {"url": "https://example.com/r.git"}, "unknown": 1}).status_code == 422
    bad_type = tenant.post("/v1/apps/web/previews", content=b"x", headers={"Content-Type": "text/plain"})
    assert bad_type.status_code == 415 and bad_type.json()["code"] == "unsupported-media-type"
    slip = io.BytesIO()
    with tarfile.open(fileobj=slip, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused = tenant.post("/v1/apps/web/previews", content=slip.getvalue(), headers=GZIP)
    assert refused.status_code == 422 and refused.json()["code"] == "archive-rejected", refused.text
    assert world.preview(app="nope").status_code == 404
    assert world.app_rows() == rows


def test_new_app_names_may_not_hold_the_preview_separator_but_old_ones_keep_working(world: World) -> None:
    tenant, services = world.tenant, world.services
    refused = tenant.post("/v1/apps", json={"name": "my--app"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "name"
    assert "reserved for previews" in refused.json()["detail"]
    with services.db.write() as session:  # made before the rule
        AppRepository(session, tenant.tenant_id).add(id="app_" + "0" * 26, name="old--app")  # type: ignore[arg-type]
    assert tenant.get("/v1/apps/old--app").status_code == 200
    preview = _created(world, world.preview(app="old--app"))
    assert re.fullmatch(r"old--app--[a-z0-9]{6}", preview["name"])
    long_name = "a" * 56
    assert tenant.post("/v1/apps", json={"name": long_name}).status_code == 201
    too_long = world.preview(app=long_name)
    assert too_long.status_code == 422 and "at most 55" in too_long.json()["detail"], too_long.text


def test_a_slug_that_is_taken_is_drawn_again(world: World) -> None:
    draws = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    world.services.previews.slugs = lambda: next(draws)
    first, second = _created(world, world.preview()), _created(world, world.preview())
    assert (first["name"], second["name"]) == ("web--aaaaaa", "web--bbbbbb")


def test_a_name_never_free_is_a_conflict_to_retry(world: World) -> None:
    world.services.previews.slugs = lambda: "aaaaaa"
    _created(world, world.preview())
    rows = world.app_rows()
    refused = world.preview()
    assert refused.status_code == 409 and refused.json()["code"] == "preview-name-unavailable", refused.text
    assert world.app_rows() == rows


def test_bodies_too_large_or_malformed_are_refused_before_anything_is_made(world: World, settings: Settings) -> None:
    tenant, rows = world.tenant, world.app_rows()
    malformed = tenant.post("/v1/apps/web/previews", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["code"] == "malformed-request", malformed.text
    huge = b'{"git": {"url": "' + b"x" * (65 * 1024) + b'"}}'
    too_big = tenant.post("/v1/apps/web/previews", content=huge, headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload-too-large", too_big.text
    declared = tenant.post(
        "/v1/apps/web/previews", content=b"x", headers={**GZIP, "Content-Length": str(settings.max_upload_bytes + 1)}
    )
    assert declared.status_code == 413, declared.text
    assert world.app_rows() == rows
    assert not any(world.services.deploys.deployments.root.glob("*/src"))  # no source left behind


def test_an_app_has_at_most_preview_max_per_app_previews(world: World) -> None:
    for _ in range(3):
        _created(world, world.preview())
    rows = world.app_rows()
    refused = world.preview()
    assert refused.status_code == 422 and refused.json()["code"] == "quota-exceeded", refused.text
    assert "(preview_max_per_app)" in refused.json()["detail"]
    assert world.app_rows() == rows


def test_delete_takes_its_route_at_once_then_its_containers_and_image(world: World) -> None:
    tenant = world.tenant
    preview = _created(world, world.preview())
    image = world.runtime.running(tenant="acme", app=preview["name"])[0].image
    assert tenant.delete(f"/v1/apps/web/previews/{preview['id']}").status_code == 204
    assert preview["id"] not in world.runtime.routes  # before the answer
    world.settle()
    assert world.runtime.running(tenant="acme", app=preview["name"]) == [] and image not in world.runtime.images
    assert tenant.get(f"/v1/apps/web/previews/{preview['id']}").status_code == 404
    assert tenant.delete(f"/v1/apps/web/previews/{preview['id']}").status_code == 404
    assert world.runtime.served_by(tenant.get("/v1/apps/web").json()["id"]) is not None  # the app serves on


def test_deleting_the_app_deletes_its_previews(world: World) -> None:
    tenant = world.tenant
    previews = [_created(world, world.preview()) for _ in range(2)]
    assert tenant.delete("/v1/apps/web").status_code == 204
    world.settle()
    for preview in previews:
        assert preview["id"] not in world.runtime.routes
        assert world.runtime.running(tenant="acme", app=preview["name"]) == []
    assert world.app_rows() == []
    assert world.runtime.images == {}


def test_the_reconcilers_pass_deletes_a_preview_whose_ttl_ran_out(world: World) -> None:
    tenant, services = world.tenant, world.services
    kept = _created(world, world.preview(params={"ttl_s": 3600}))
    gone = _created(world, world.preview(params={"ttl_s": 60}))
    image = world.runtime.running(tenant="acme", app=gone["name"])[0].image
    services.previews.clock = lambda: utcnow() + timedelta(seconds=61)
    report = services.deploys.reconciler.run_once()  # the server's own reconciler (its Docker untouched: nothing started)
    assert any(gone["id"] in action and "ttl_s ran out" in action for action in report.actions), report
    assert gone["id"] not in world.runtime.routes
    world.settle()
    assert world.runtime.running(tenant="acme", app=gone["name"]) == [] and image not in world.runtime.images
    assert tenant.get(f"/v1/apps/web/previews/{gone['id']}").status_code == 404
    assert [p["id"] for p in tenant.get("/v1/apps/web/previews").json()["items"]] == [kept["id"]]
    assert world.runtime.served_by(kept["id"]) is not None
    events = tenant.get("/v1/audit").json()["items"]
    assert any(e["target"].endswith(f"/previews/{gone['id']}") and "ttl_s ran out" in e["action"] for e in events)


def test_an_expired_preview_goes_after_a_restart_too(world: World, settings: Settings) -> None:
    preview = _created(world, world.preview(params={"ttl_s": 1}))
    time.sleep(1.1)
    again = bootstrap(settings)  # a new process over the same database: nothing in memory
    again.deploys.teardown.runtime = world.runtime
    try:
        report = again.deploys.reconciler.run_once()
        again.deploys.teardown.drain()
    finally:
        again.db.dispose()
    assert any(preview["id"] in a for a in report.actions), report
    assert preview["id"] not in world.runtime.routes
    assert world.runtime.running(tenant="acme", app=preview["name"]) == []
    assert world.tenant.get(f"/v1/apps/web/previews/{preview['id']}").status_code == 404


def test_a_preview_counts_against_the_compute_quotas(world: World, operator: Caller) -> None:
    tenant = world.tenant
    limits = f"/v1/tenants/{tenant.tenant_id}/compute-limits"
    assert operator.request("PUT", limits, json={"max_apps": 1}).status_code == 200
    rows = world.app_rows()
    refused = world.preview()
    assert refused.status_code == 422 and "(max_apps)" in refused.json()["detail"], refused.text
    assert world.app_rows() == rows
    assert operator.request("PUT", limits, json={"max_replicas": 1}).status_code == 200
    refused = world.preview()  # the app runs 1 replica already
    assert refused.status_code == 422 and "(max_replicas)" in refused.json()["detail"], refused.text
    assert world.app_rows() == rows
    assert operator.request("PUT", limits, json={}).status_code == 200
    _created(world, world.preview())
    usage = operator.get(limits).json()["usage"]
    assert (usage["apps"], usage["replicas"]) == (2, 2)


def test_a_preview_is_redeployed_from_another_source_and_keeps_its_expiry(world: World) -> None:
    tenant = world.tenant
    preview = _created(world, world.preview(params={"ttl_s": 900}))
    first = world.runtime.running(tenant="acme", app=preview["name"])[0].id
    again = tenant.post(f"/v1/apps/web/previews/{preview['name']}/deployments", content=source("v2"), headers=GZIP)
    assert again.status_code == 202, again.text
    assert again.json()["deployment"]["id"] != preview["deployment"]["id"] and again.json()["expires_at"] == preview["expires_at"]
    world.run_jobs()
    got = tenant.get(f"/v1/apps/web/previews/{preview['id']}").json()
    assert got["status"] == "running" and got["deployment"]["release"] == "v2"
    [container] = world.runtime.running(tenant="acme", app=preview["name"])
    assert container.id != first


def test_another_tenant_gets_404_for_every_preview_route(world: World, new_tenant: Any) -> None:
    preview = _created(world, world.preview())
    other: Caller = new_tenant("other", ["admin"])
    assert other.post("/v1/apps", json={"name": "web"}).status_code == 201  # same app name, its own
    for ref in (preview["id"], preview["name"]):
        assert other.get(f"/v1/apps/web/previews/{ref}").status_code == 404
        assert other.delete(f"/v1/apps/web/previews/{ref}").status_code == 404
        assert other.post(f"/v1/apps/web/previews/{ref}/deployments", content=source(), headers=GZIP).status_code == 404
        assert other.get(f"/v1/apps/{ref}/deployments").status_code == 404
    app_id = world.tenant.get("/v1/apps/web").json()["id"]
    assert other.get(f"/v1/apps/{app_id}/previews").status_code == 404
    assert other.post(f"/v1/apps/{app_id}/previews", content=source(), headers=GZIP).status_code == 404
    assert other.get("/v1/apps/web/previews").json() == {"items": []}
    assert world.runtime.served_by(preview["id"]) is not None


class RecordingSnapshots:
    """A stand-in for the snapshots part's database forking: what it was asked, and when."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.forked: list[tuple[str, str, str, list[tuple[str, str]]]] = []
        self.dropped: list[tuple[str, str]] = []

    def fork_databases(self, tenant_id: str, snapshot_id: str, app_id: str) -> None:
        if snapshot_id == "snp_missing":
            raise NotFound.of("snapshot", snapshot_id)
        self.forked.append((tenant_id, snapshot_id, app_id, self.world.app_rows()))  # the preview's row is there already

    def drop_databases(self, tenant_id: str, app_id: str) -> None:
        with self.world.services.db.read() as session:  # its row is still there to read
            assert session.get(AppRow, app_id) is not None
        self.dropped.append((tenant_id, app_id))


def test_a_snapshot_forks_databases_for_the_preview_and_they_go_with_it(world: World, tmp_path: Path) -> None:
    """The seam the snapshots part plugs into: fork in the create transaction (a refusal makes
    nothing), drop with every preview deleted, by DELETE, at its TTL and with its app."""
    tenant, services = world.tenant, world.services
    snapshots = RecordingSnapshots(world)
    services.previews.use_snapshots(snapshots)
    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE})
    git = {"url": f"file://{repo}", "ref": "main"}
    rows, queued = world.app_rows(), services.deploys.queue.depth().queued
    missing = world.preview({"git": git, "snapshot": "snp_missing"})
    assert missing.status_code == 404 and "snp_missing" in missing.json()["detail"], missing.text
    assert world.app_rows() == rows and services.deploys.queue.depth().queued == queued and snapshots.forked == []

    forked = _created(world, world.preview({"git": git, "snapshot": "snp_1"}))
    [(tenant_id, snapshot_id, app_id, rows_then)] = snapshots.forked
    assert (tenant_id, snapshot_id, app_id) == (tenant.tenant_id, "snp_1", forked["id"])
    assert (forked["name"], "preview") in rows_then
    expiring = _created(world, world.preview(params={"ttl_s": 60}))
    with_app = _created(world, world.preview(params={"ttl_s": 3600}))
    assert len(snapshots.forked) == 1  # only the one that asked

    assert tenant.delete(f"/v1/apps/web/previews/{forked['id']}").status_code == 204
    services.previews.clock = lambda: utcnow() + timedelta(seconds=61)
    services.deploys.reconciler.run_once()
    assert tenant.delete("/v1/apps/web").status_code == 204
    assert snapshots.dropped == [(tenant.tenant_id, p["id"]) for p in (forked, expiring, with_app)]


def test_a_retried_create_with_its_idempotency_key_makes_one_preview(world: World) -> None:
    headers = {**GZIP, "Idempotency-Key": "preview-once"}
    first = world.tenant.post("/v1/apps/web/previews", content=source("once"), headers=headers)
    again = world.tenant.post("/v1/apps/web/previews", content=source("once"), headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == first.json()["id"]
    other = world.tenant.post("/v1/apps/web/previews", content=source("other"), headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused", other.text
    assert [p["id"] for p in world.tenant.get("/v1/apps/web/previews").json()["items"]] == [first.json()["id"]]


def test_the_openapi_document_describes_both_body_forms(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    create = spec["paths"]["/v1/apps/{app}/previews"]["post"]
    body = create["requestBody"]["content"]
    assert set(body) == {"application/json", "application/gzip"}
    schema = body["application/json"]["schema"]
    assert schema["required"] == ["git"] and schema["additionalProperties"] is False
    ttl = next(s for s in schema["properties"]["ttl_s"]["anyOf"] if s.get("type") == "integer")
    assert ttl["minimum"] == 1
    assert schema["properties"]["git"]["required"] == ["url"]
    assert {p["name"] for p in create["parameters"]} >= {"ttl_s", "Idempotency-Key"}
    assert {"202", "404", "413", "415", "422"} <= set(create["responses"])
    redeploy = spec["paths"]["/v1/apps/{app}/previews/{preview}/deployments"]["post"]
    assert set(redeploy["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {"git"}


def test_a_previews_container_is_metered_as_the_tenants_compute(world: World) -> None:
    preview = _created(world, world.preview())
    [container] = world.runtime.running(tenant="acme", app=preview["name"])
    sampler = world.services.sampler
    sampler.stop()
    sampler.runtime = world.runtime
    sampler.run_once()
    world.runtime.use(container.id, cpu_seconds=4.0, memory_bytes=64 * 2**20)
    sampler.run_once()
    totals = world.tenant.get("/v1/usage?kind=compute").json()["totals"]
    assert totals["cpu_seconds"] == pytest.approx(4.0) and totals["memory_peak_bytes"] >= 64 * 2**20
