"""Snapshots and forks against the real engine, runsc, Postgres, loop-device volumes and
Traefik, through the API only: an app with a volume and a linked Postgres, holding rows in
both, is snapshotted (its container stopped while the volume is read, serving again after)
and forked into a new app; the fork serves the same data at its own host, from its own
volume and its own database (new credentials); a write to the fork does not show in the
source; a snapshot file with one byte flipped is refused by its checksum, nothing made; the
other tenant gets 404 on the snapshot and cannot fork it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
APP_NAME, FORK_NAME = "shop", "shop-copy"

APP = r"""
import http.server, os, subprocess

NOTES = "/data/notes.txt"


def psql(sql):
    r = subprocess.run(["psql", os.environ["DATABASE_URL"], "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0, (r.stdout if r.returncode == 0 else r.stderr).strip()


def answer(path):
    parts = path.strip("/").split("/")
    if parts == ["healthz"]:
        return True, "ok"
    if parts[:2] == ["pg", "write"]:
        return psql(f"CREATE TABLE IF NOT EXISTS rows (v text); INSERT INTO rows VALUES ('{parts[2]}')")
    if parts == ["pg", "read"]:
        return psql("SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM rows")
    if parts[:2] == ["file", "write"]:
        with open(NOTES, "a") as f:
            f.write(parts[2] + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True, "ok"
    if parts == ["file", "read"]:
        try:
            with open(NOTES) as f:
                return True, ",".join(f.read().split())
        except FileNotFoundError:
            return True, ""
    if parts == ["whoami"]:
        return True, os.environ["DATABASE_URL"].rsplit("@", 1)[1]
    return False, "unknown path"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        try:
            ok, text = answer(self.path)
        except Exception as exc:
            ok, text = False, f"{type(exc).__name__}: {exc}"
        body = (text + "\n").encode()
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""

DOCKERFILE = """\
FROM moorage/postgres:15
ENTRYPOINT []
HEALTHCHECK NONE
# The postgres image's user cannot write to a fresh volume's root; the app runs as root in its sandbox.
USER root
COPY app.py /app/app.py
CMD ["python3", "-u", "/app/app.py"]
"""


@dataclass
class World:
    platform: Platform
    b: Caller
    app: Litestar

    @property
    def a(self) -> Caller:
        return self.platform.tenant

    def http(self, app: str, path: str, timeout: float = 30.0) -> httpx.Response:
        return httpx.get(self.platform.traefik.url + path, headers={"Host": self.platform.host(app)}, timeout=timeout)

    def text(self, app: str, path: str) -> str:
        r = self.http(app, path)
        assert r.status_code == 200, (app, path, r.status_code, r.text)
        return r.text.strip()

    def wait(self, path: str, field: str, done: set[str], timeout: float = 300.0) -> dict[str, Any]:
        deadline, body = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            body = self.a.get(path).json()
            if body.get(field) in done:
                return body
            time.sleep(0.25)
        raise AssertionError(f"{path} never reached {done}: {body}")

    def serving(self, app: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http(app, "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"{app} is not served through Traefik")


@pytest.fixture(scope="module")
def world(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    a_name, b_name = f"e2e-snap-{RUN_ID}", f"e2e-snapb-{RUN_ID}"
    settings = e2e_settings(
        tmp_path_factory.mktemp("e2e-snapshot-data"), traefik, job_workers=3, deploys_per_tenant=3, health_timeout_s=60
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e-snap").token)
            callers = []
            for name in (a_name, b_name):
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "e2e"}).json()
                callers.append(Caller(client, key["token"], key["id"], tenant["id"]))
            yield World(Platform(app, client, callers[0], a_name, traefik), callers[1], app)
    finally:
        for name in (a_name, b_name):
            cleanup_tenant(name)


@pytest.fixture(scope="module")
def snapshot(world: World) -> dict[str, Any]:
    """shop: a volume and a linked Postgres with rows in both, deployed; then snapshotted."""
    a = world.a
    assert a.post("/v1/databases", json={"name": "orders", "engine": "postgres"}).status_code == 202
    assert a.post("/v1/apps", json={"name": APP_NAME, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    volume = a.post(f"/v1/apps/{APP_NAME}/volumes", json={"name": "data", "mount_path": "/data", "size_mb": 16})
    assert volume.status_code == 201, volume.text
    assert a.post(f"/v1/apps/{APP_NAME}/links", json={"database": "orders"}).status_code == 201
    assert a.request("PUT", f"/v1/apps/{APP_NAME}/env/GREETING", json={"value": "hello from the source"}).status_code == 200
    dep = world.platform.deploy(APP_NAME, tar_gz({"app.py": APP, "Dockerfile": DOCKERFILE}))
    assert world.wait("/v1/databases/orders", "status", {"available", "failed"})["status"] == "available"
    assert world.platform.wait(APP_NAME, dep, timeout=300)["status"] == "running"
    world.serving(APP_NAME)
    for value in ("alpha", "beta"):
        world.text(APP_NAME, f"/pg/write/{value}")
        assert world.text(APP_NAME, f"/file/write/{value}") == "ok"
    started = time.monotonic()
    r = a.post(f"/v1/apps/{APP_NAME}/snapshots")
    assert r.status_code == 202, r.text
    done = world.wait(r.headers["location"], "status", {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    print(
        f"\nsnapshot in {time.monotonic() - started:.1f}s: {done['size_bytes']} bytes, "
        f"app stopped {done['paused_ms']} ms while its volume was read"
    )
    return done


def test_a_snapshot_holds_the_volume_and_the_database_and_the_source_serves_again(world: World, snapshot: dict) -> None:
    assert {f["kind"] for f in snapshot["files"]} == {"volume", "database"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in snapshot["files"])
    assert snapshot["paused_ms"] is not None and snapshot["paused_ms"] > 0
    world.serving(APP_NAME)  # started again, its route pointing at it
    assert world.text(APP_NAME, "/file/read") == "alpha,beta"
    assert world.text(APP_NAME, "/pg/read") == "alpha,beta"
    # No helper container is left behind.
    client = docker.from_env()
    helpers = client.containers.list(all=True, filters={"label": "moorage.role=volume-copy"})
    assert [c.name for c in helpers if world.platform.tenant_name in str(c.labels)] == []


def test_the_fork_serves_the_same_data_from_its_own_volume_and_database(world: World, snapshot: dict) -> None:
    a = world.a
    started = time.monotonic()
    r = a.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": FORK_NAME})
    assert r.status_code == 202, r.text
    fork = world.wait(r.headers["location"], "status", {"succeeded", "failed"})
    assert fork["status"] == "succeeded", fork
    print(f"\nfork served in {time.monotonic() - started:.1f}s")
    world.serving(FORK_NAME)
    assert world.text(FORK_NAME, "/file/read") == "alpha,beta"
    assert world.text(FORK_NAME, "/pg/read") == "alpha,beta"
    assert world.text(FORK_NAME, "/whoami").startswith("db-shop-copy-orders:5432/")
    assert world.text(APP_NAME, "/whoami").startswith("db-orders:5432/")
    assert a.get(f"/v1/apps/{FORK_NAME}/env?reveal=true").json()["vars"][0]["value"] == "hello from the source"
    [release] = a.get(f"/v1/apps/{FORK_NAME}/releases").json()["items"]
    assert release["image_id"] == snapshot["image"]
    deployment = a.get(f"/v1/apps/{FORK_NAME}/deployments/{fork['deployment_id']}").json()
    assert deployment["source"]["kind"] == "image" and deployment["builder"] is None
    # Writes to the fork stay in the fork.
    world.text(FORK_NAME, "/pg/write/gamma")
    assert world.text(FORK_NAME, "/file/write/gamma") == "ok"
    assert world.text(FORK_NAME, "/pg/read") == "alpha,beta,gamma"
    assert world.text(FORK_NAME, "/file/read") == "alpha,beta,gamma"
    assert world.text(APP_NAME, "/pg/read") == "alpha,beta"
    assert world.text(APP_NAME, "/file/read") == "alpha,beta"
    # Its own Docker volume, on the tenant network under runsc.
    client = docker.from_env()
    label = f"moorage.tenant={world.platform.tenant_name}"
    containers = {c.labels["moorage.app"]: c for c in client.containers.list(filters={"label": [label, "moorage.role=app"]})}
    mounts = {name: {m["Name"] for m in c.attrs["Mounts"] if m["Type"] == "volume"} for name, c in containers.items()}
    assert mounts[APP_NAME] and mounts[FORK_NAME] and mounts[APP_NAME].isdisjoint(mounts[FORK_NAME])
    assert containers[FORK_NAME].attrs["HostConfig"]["Runtime"] == "runsc"


def test_a_corrupted_snapshot_file_is_refused_by_its_checksum(world: World, snapshot: dict) -> None:
    services = world.app.state.services
    folder = services.snapshots.directory(world.a.tenant_id, snapshot["id"])
    dump = next(f for f in snapshot["files"] if f["kind"] == "database")
    path = folder / dump["path"]
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        apps_before = {a["name"] for a in world.a.get("/v1/apps").json()["items"]}
        r = world.a.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "shop-corrupt"})
        assert r.status_code == 409 and r.json()["code"] == "snapshot-corrupt", r.text
        assert dump["path"] in r.json()["detail"]
        assert {a["name"] for a in world.a.get("/v1/apps").json()["items"]} == apps_before
        assert world.a.get("/v1/databases/shop-corrupt-orders").status_code == 404
    finally:
        path.write_bytes(original)


def test_another_tenant_gets_404_and_cannot_fork(world: World, snapshot: dict) -> None:
    assert world.b.get(f"/v1/snapshots/{snapshot['id']}").status_code == 404
    assert world.b.post(f"/v1/snapshots/{snapshot['id']}/fork", json={"name": "stolen"}).status_code == 404
    assert world.b.get("/v1/snapshots").json()["items"] == []
    assert world.b.get("/v1/apps").json()["items"] == []
