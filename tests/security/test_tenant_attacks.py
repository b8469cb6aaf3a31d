"""Attacks of one tenant on another's objects, against the real control plane, dockerd, runsc,
Traefik and Redis. Each attacker holds only its own tenant's API key and picks names that
joined to the victim's object names under the old `{tenant}-{name}` / `tenant--app` rules:

- databases: tenant `X` with database `ta-cache` met tenant `X-ta`'s `cache` in one volume and
  container name (`moorage-db-X-ta-cache`): it read the victim's data through a backup, learnt
  its container id from a 409, and purged its retained volume;
- routes: tenant `Y` with app `w--app` met tenant `Y--w`'s app `app` in one route file
  (`Y--w--app.yml`) and took its hostname's traffic;
- a deleted app's route file stayed, pointing at an IP a later container may get.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.ids import new_id
from control.jobs.runtime_docker import INSTANCE_LABEL
from control.jobs.runtime_port import Route
from control.store.repositories.apps import AppRepository
from runtime.databases.provision import ID_LABEL
from runtime.sandbox import ContainerSpec
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import cleanup_tenant, e2e_settings, traefik  # noqa: F401 (fixture)
from tests.runtime.helpers import PAST_TRAEFIK_THROTTLE_S, PYTHON, RUN_ID
from tests.security.host_watch import HostWatch

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DB_VICTIM, DB_ATTACKER = f"a{RUN_ID}-ta", f"a{RUN_ID}"  # `cache` of the one, `ta-cache` of the other
ROUTE_VICTIM, ROUTE_ATTACKER = f"v{RUN_ID}--w", f"v{RUN_ID}"  # `app` of the one, `w--app` of the other
SECRET = "victim-only-7c1e"


@dataclass
class Arena:
    app: Litestar
    traefik: TraefikProcess
    callers: dict[str, Caller]

    def wait(self, who: str, path: str, field: str, done: set[str], timeout: float = 180) -> dict[str, Any]:
        deadline, body = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            body = self.callers[who].get(path).json()
            if body.get(field) in done:
                return body
            time.sleep(0.3)
        raise AssertionError(f"{path} never reached {done}: {body}")

    def host(self, tenant: str, app: str) -> str:
        return f"{app}.{tenant}.apps.test"

    def get(self, tenant: str, app: str) -> httpx.Response:
        return httpx.get(self.traefik.url + "/", headers={"Host": self.host(tenant, app)}, timeout=3.0)

    def deploy(self, tenant: str, app: str, version: str) -> dict[str, Any]:
        caller = self.callers[tenant]
        if caller.get(f"/v1/apps/{app}").status_code == 404:
            assert caller.post("/v1/apps", json={"name": app, "port": 8080}).status_code == 201
        r = caller.post(
            f"/v1/apps/{app}/deployments", content=tar_gz(source(version)), headers={"Content-Type": "application/gzip"}
        )
        assert r.status_code == 202, r.text
        return self.wait(tenant, f"/v1/apps/{app}/deployments/{r.json()['id']}", "status", {"running", "failed", "cancelled"})


@pytest.fixture(scope="module")
def arena(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:  # noqa: F811
    tenants = (DB_VICTIM, DB_ATTACKER, ROUTE_VICTIM, ROUTE_ATTACKER)
    app = create_app(
        e2e_settings(
            tmp_path_factory.mktemp("attacks"), traefik, job_workers=2, deploys_per_tenant=2, database_purge_interval_s=0
        )
    )
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("attacks").token)
            callers = {}
            for name in tenants:
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "own"}).json()
                callers[name] = Caller(client, key["token"], key["id"], tenant["id"])
            yield Arena(app, traefik, callers)
    finally:
        client_ = docker.from_env()
        for name in tenants:
            cleanup_tenant(name)
            for volume in client_.volumes.list(filters={"label": f"moorage.tenant={name}"}):
                volume.remove(force=True)
        client_.close()


def _redis_cli(arena: Arena, tenant: str, database: str, *args: str) -> str:
    caller = arena.callers[tenant]
    url = caller.get(f"/v1/databases/{database}/connection?reveal=true").json()["url"]
    db_id = caller.get(f"/v1/databases/{database}").json()["id"]
    client = docker.from_env()
    (container,) = client.containers.list(filters={"label": [f"moorage.tenant={tenant}", f"db.moorage/id={db_id}"]})
    password = urlsplit(url).password or ""
    out = container.exec_run(["redis-cli", "--no-auth-warning", "-a", password, *args])
    client.close()
    return out.output.decode().strip()


def _status(arena: Arena, tenant: str, app: str) -> int:
    try:
        return httpx.get(arena.traefik.url + "/", headers={"Host": arena.host(tenant, app)}, timeout=1.0).status_code
    except httpx.TimeoutException:
        return 0


def _exists(rt: Any, container_id: str) -> bool:
    try:
        rt.containers.inspect(container_id)
    except docker.errors.NotFound:
        return False
    return True


def _route_files_naming(arena: Arena, host: str) -> list[str]:
    return [p.name for p in arena.traefik.dynamic_dir.glob("*.yml") if f"`{host}`" in p.read_text()]


def _wait_gone(caller: Caller, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while caller.get(path).status_code != 404:
        assert time.monotonic() < deadline, f"{path} still there: {caller.get(path).text}"
        time.sleep(0.3)


def _volumes_of(tenant: str) -> dict[str, dict[str, str]]:
    client = docker.from_env()
    found = {v.name: v.attrs.get("Labels") or {} for v in client.volumes.list(filters={"label": f"moorage.tenant={tenant}"})}
    client.close()
    return found


def test_a_prefix_named_tenant_neither_reaches_nor_deletes_the_victims_database(arena: Arena) -> None:
    victim, attacker = arena.callers[DB_VICTIM], arena.callers[DB_ATTACKER]
    assert victim.post("/v1/databases", json={"name": "cache", "engine": "redis", "memory_mb": 64}).status_code == 202
    arena.wait(DB_VICTIM, "/v1/databases/cache", "status", {"available", "failed"})
    assert _redis_cli(arena, DB_VICTIM, "cache", "SET", "secret", SECRET) == "OK"
    assert _redis_cli(arena, DB_VICTIM, "cache", "SAVE") == "OK"

    # While the victim's container runs: the attacker's database is its own, and no 409 with
    # the victim's container id (an existence oracle) comes back.
    r = attacker.post("/v1/databases", json={"name": "ta-cache", "engine": "redis", "memory_mb": 64})
    assert r.status_code == 202, r.text
    mine = arena.wait(DB_ATTACKER, "/v1/databases/ta-cache", "status", {"available", "failed"})
    assert mine["status"] == "available", mine
    assert _redis_cli(arena, DB_ATTACKER, "ta-cache", "GET", "secret") == ""
    assert attacker.delete("/v1/databases/ta-cache?purge=true&force=true").status_code == 202
    _wait_gone(attacker, "/v1/databases/ta-cache")
    assert _redis_cli(arena, DB_VICTIM, "cache", "GET", "secret") == SECRET  # the victim's runs on, untouched

    # The victim deletes its database: the volume is retained for the grace period.
    assert victim.delete("/v1/databases/cache").status_code == 202
    gone = arena.wait(DB_VICTIM, "/v1/databases/cache", "status", {"deleted", "failed"}, timeout=60)
    assert gone["status"] == "deleted", gone
    retained = _volumes_of(DB_VICTIM)
    assert [labels.get("db.moorage/id") for labels in retained.values()] == [gone["id"]]

    # The name is free again on the attacker's side: it makes `ta-cache` once more, backs it up
    # and downloads the backup. Under the old names this adopted the victim's retained volume.
    r = attacker.post("/v1/databases", json={"name": "ta-cache", "engine": "redis", "memory_mb": 64})
    assert r.status_code == 202, r.text
    assert arena.wait(DB_ATTACKER, "/v1/databases/ta-cache", "status", {"available", "failed"})["status"] == "available"
    backup = attacker.post("/v1/databases/ta-cache/backups")
    assert backup.status_code == 202, backup.text
    done = arena.wait(DB_ATTACKER, f"/v1/databases/ta-cache/backups/{backup.json()['id']}", "status", {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    dump = attacker.get(f"/v1/databases/ta-cache/backups/{done['id']}/download")
    assert dump.status_code == 200 and SECRET.encode() not in dump.content, "the attacker read the victim's data"

    # Purged with force: only the attacker's own volume goes; the victim's stays, data inside.
    assert attacker.delete("/v1/databases/ta-cache?purge=true&force=true").status_code == 202
    _wait_gone(attacker, "/v1/databases/ta-cache")
    assert _volumes_of(DB_VICTIM) == retained, "the attacker's purge removed the victim's volume"
    client = docker.from_env()
    (name,) = retained
    probe = client.containers.run(
        "moorage/redis:7",
        [f"grep -c {SECRET} /data/dump.rdb || true"],
        remove=True,
        volumes={name: {"bind": "/data", "mode": "ro"}},
        entrypoint=["sh", "-c"],
        user="0",
    )
    client.close()
    assert probe.strip() == b"1", "the victim's data did not survive"


def test_a_route_key_collision_does_not_take_the_victims_hostname(arena: Arena) -> None:
    assert arena.deploy(ROUTE_VICTIM, "app", "victim")["status"] == "running"
    assert arena.get(ROUTE_VICTIM, "app").text.startswith("version=victim")
    # New app names may not hold '--' any more (the form previews' names take); an app made
    # before that rule still runs, so the attacker's is recorded as such an app was.
    attacker = arena.callers[ROUTE_ATTACKER]
    refused = attacker.post("/v1/apps", json={"name": "w--app", "port": 8080})
    assert refused.status_code == 422 and "--" in refused.json()["detail"], refused.text
    with arena.app.state.services.db.write() as session:
        AppRepository(session, attacker.tenant_id).add(id=new_id("app"), name="w--app", port=8080)
    with HostWatch(arena.traefik.url, arena.host(ROUTE_VICTIM, "app"), body_prefix="version=victim") as watch:
        assert arena.deploy(ROUTE_ATTACKER, "w--app", "attacker")["status"] == "running"
        arena.app.state.services.deploys.reconciler.run_once()
        time.sleep(PAST_TRAEFIK_THROTTLE_S)  # the attacker's route is applied: the watch sees what it did
    failures = watch.failures
    assert not failures, f"the victim's hostname failed {len(failures)} times: {failures[:5]}"
    assert arena.get(ROUTE_ATTACKER, "w--app").text.startswith("version=attacker")
    files = sorted(p.name for p in arena.traefik.dynamic_dir.glob("*.yml"))
    victim_app = arena.callers[ROUTE_VICTIM].get("/v1/apps/app").json()["id"]
    attacker_app = arena.callers[ROUTE_ATTACKER].get("/v1/apps/w--app").json()["id"]
    assert {f"{victim_app}.yml", f"{attacker_app}.yml"} <= set(files) and not any("--" in f for f in files)


def test_deleting_an_app_takes_its_hostname_off_the_router(arena: Arena) -> None:
    caller = arena.callers[ROUTE_ATTACKER]
    assert arena.deploy(ROUTE_ATTACKER, "gone", "short-lived")["status"] == "running"
    host = arena.host(ROUTE_ATTACKER, "gone")
    assert _route_files_naming(arena, host) and arena.get(ROUTE_ATTACKER, "gone").status_code == 200
    assert caller.delete("/v1/apps/gone").status_code == 204
    assert not _route_files_naming(arena, host), "the route file outlived its app"
    # Until Traefik reloads it may still send the request to the old container, which the
    # reconciler may be removing meanwhile (then the request hangs): count that as not yet.
    deadline = time.monotonic() + 10
    while _status(arena, ROUTE_ATTACKER, "gone") != 404:
        assert time.monotonic() < deadline, "Traefik still routes the deleted app's hostname"
        time.sleep(0.1)
    # The reconciler removes the container it leaves behind, and nothing of the live apps.
    report = arena.app.state.services.deploys.reconciler.run_once()
    assert not report.errors, report.errors
    assert arena.get(ROUTE_VICTIM, "app").status_code == 200
    client = docker.from_env()
    left = client.containers.list(all=True, filters={"label": [f"moorage.tenant={ROUTE_ATTACKER}", "moorage.app=gone"]})
    client.close()
    assert not left, [c.name for c in left]


def test_the_reconciler_removes_what_no_live_app_or_database_accounts_for(arena: Arena) -> None:
    tenant, caller = ROUTE_ATTACKER, arena.callers[ROUTE_ATTACKER]
    rt = arena.app.state.services.deploys.runtime
    # Two jobs of a tenant at once (the arena's setting): the database provisions while the app deploys.
    assert caller.post("/v1/databases", json={"name": "keep", "engine": "redis", "memory_mb": 64}).status_code == 202
    assert arena.deploy(tenant, "live", "live")["status"] == "running"
    keep = arena.wait(tenant, "/v1/databases/keep", "status", {"available", "failed"})
    assert keep["status"] == "available", keep
    live_app = caller.get("/v1/apps/live").json()["id"]
    dynamic = arena.traefik.dynamic_dir

    # Orphans of ours: a route of an app id nothing knows, an old-style file of our tenant's
    # deleted app, a database container whose database is gone.
    rt.write_route(Route("app_0000000000orphan0000000000", tenant, "ghost", "10.255.0.9", 8080, "v9"))
    (dynamic / f"{tenant}--ghost.yml").write_text("http: {}\n")
    net = rt.networks.ensure(tenant).name
    orphan_db = rt.containers.run(
        ContainerSpec(
            tenant=tenant,
            app="db-ghost",
            image=PYTHON,
            network=net,
            role="database",
            command=["sleep", "600"],
            name=f"moorage-test-{RUN_ID}-orphan-db",
            labels={ID_LABEL: "db_0000000000ghost000000000000", INSTANCE_LABEL: rt.instance},
        ),
        rt.policy,
    )
    # Not ours: a route file another writer made, an old-style file of no tenant of ours, and
    # a database container of another control plane.
    (dynamic / "app_0000000000foreign00000000000.yml").write_text("http: {}\n")
    (dynamic / f"z{RUN_ID}-nobody--x.yml").write_text("http: {}\n")
    foreign_db = rt.containers.run(
        ContainerSpec(
            tenant=tenant,
            app="db-other",
            image=PYTHON,
            network=net,
            role="database",
            command=["sleep", "600"],
            name=f"moorage-test-{RUN_ID}-foreign-db",
            labels={ID_LABEL: "db_0000000000other000000000000", INSTANCE_LABEL: "mrg-other"},
        ),
        rt.policy,
    )
    try:
        report = arena.app.state.services.deploys.reconciler.run_once()
        assert not report.errors, report.errors
        files = {p.name for p in dynamic.glob("*.yml")}
        assert "app_0000000000orphan0000000000.yml" not in files and f"{tenant}--ghost.yml" not in files, report
        assert {"app_0000000000foreign00000000000.yml", f"z{RUN_ID}-nobody--x.yml", f"{live_app}.yml"} <= files
        deadline = time.monotonic() + 20  # the background pass may be the one removing it
        while _exists(rt, orphan_db.id):
            assert time.monotonic() < deadline, "the orphan database container stayed"
            time.sleep(0.2)
        assert rt.containers.inspect(foreign_db.id).status == "running"
        keeper = rt.containers.find(tenant=tenant, role="database")
        assert any(c.labels.get(ID_LABEL) == keep["id"] and c.status == "running" for c in keeper)
        assert arena.get(tenant, "live").text.startswith("version=live")
        assert arena.app.state.services.deploys.reconciler.run_once().actions == []  # nothing more to do
    finally:
        for leftover in (foreign_db, orphan_db):
            with contextlib.suppress(docker.errors.APIError):  # already being removed
                rt.containers.remove(leftover.id, force=True)
        for name in ("app_0000000000foreign00000000000.yml", f"z{RUN_ID}-nobody--x.yml"):
            (dynamic / name).unlink(missing_ok=True)


def test_another_tenant_can_neither_exec_in_read_renew_nor_delete_an_environment(arena: Arena) -> None:
    victim, attacker = arena.callers[DB_VICTIM], arena.callers[DB_ATTACKER]
    created = victim.post("/v1/environments", json={"image": PYTHON, "cpu": 0.25, "memory_mb": 128, "lease_s": 300})
    assert created.status_code == 201, created.text
    env = created.json()
    base = f"/v1/environments/{env['id']}"
    marker = ["sh", "-c", "echo attacker > /workspace/pwned"]
    archive = tar_gz({"pwned": "attacker"})
    answers = {
        "get": attacker.get(base),
        "exec": attacker.post(f"{base}/exec", json={"command": marker}),
        "exec-stream": attacker.post(f"{base}/exec?stream=true", json={"command": marker}),
        "renew": attacker.post(f"{base}/renew", json={"lease_s": 3600}),
        "pull": attacker.get(f"{base}/files?path=/workspace"),
        "push": attacker.request("PUT", f"{base}/files", content=archive, headers={"Content-Type": "application/gzip"}),
        "delete": attacker.delete(base),
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 404)
    assert attacker.get("/v1/environments").json()["items"] == []
    after = victim.get(base).json()
    assert after["lease_expires_at"] == env["lease_expires_at"]
    # (python, not ls: this host's runsc answers coreutils' statx with EINVAL)
    listing = victim.post(
        f"{base}/exec", json={"command": ["python3", "-c", "import os; print(os.listdir('/workspace'))"]}
    ).json()
    assert listing["exit_code"] == 0 and listing["stdout"] == "[]\n", listing  # no exec, no push reached it
    assert victim.delete(base).status_code == 204
