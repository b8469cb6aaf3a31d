"""Managed databases against the real engine, runsc and Traefik, through the API only:

1. Postgres and Redis provisioned by jobs on the tenant's network; an app deployed through
   the real pipeline gets DATABASE_URL / REDIS_URL from links at its release, writes and
   reads through them, and serves what it read through Traefik;
2. backup -> drop table -> restore -> the row is back; a backup with one byte flipped is
   refused with a clear reason and the database keeps its current data (Redis too); a
   backup schedule fires real dumps and retention keeps exactly N of them;
3. tenant B's containers cannot reach tenant A's databases (by name or IP), and B's key
   sees 404 on every database route (see also tests/control/test_isolation.py);
4. the passwords never appear in the control plane's logs, build logs, app logs, listings
   or the audit trail; deleting keeps the volume for the grace period, purging removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.clock import utcnow
from control.logging import attach_stream
from control.store.models import DatabaseRow
from runtime.sandbox import ContainerSpec
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import PYTHON, RUN_ID

pytestmark = pytest.mark.docker
APP_NAME = "notes"
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print('blocked', type(e).__name__, e); sys.exit(1)\n"
)

APP = r"""
import http.server, os, socket, subprocess
from urllib.parse import unquote, urlsplit


def psql(sql):
    r = subprocess.run(["psql", os.environ["DATABASE_URL"], "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0, (r.stdout if r.returncode == 0 else r.stderr).strip()


def redis(*args):
    url = urlsplit(os.environ["REDIS_URL"])
    with socket.create_connection((url.hostname, url.port or 6379), timeout=10) as sock:
        replies = sock.makefile("rb")

        def call(*parts):
            data = [p.encode() for p in parts]
            sock.sendall(b"*%d\r\n" % len(data) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in data))
            line = replies.readline()
            if line[:1] == b"-":
                raise RuntimeError(line[1:].decode().strip())
            if line[:1] == b"$":
                size = int(line[1:])
                return "" if size < 0 else replies.read(size + 2)[:-2].decode()
            return line[1:].decode().strip()

        call("AUTH", unquote(url.username or "default"), unquote(url.password or ""))
        return call(*args)


def answer(path):
    parts = path.strip("/").split("/")
    if parts == ["healthz"]:
        return True, "ok"
    if parts == ["env"]:  # which URLs the release got, never their values
        return True, ",".join(sorted(k for k in os.environ if k.endswith("_URL")))
    if parts[:2] == ["pg", "write"]:
        return psql(f"CREATE TABLE IF NOT EXISTS notes (v text); INSERT INTO notes VALUES ('{parts[2]}')")
    if parts == ["pg", "read"]:
        return psql("SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM notes")
    if parts == ["pg", "drop"]:
        return psql("DROP TABLE notes")
    if parts[:2] == ["redis", "set"]:
        return True, redis("SET", "note", parts[2])
    if parts == ["redis", "get"]:
        return True, redis("GET", "note")
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


print(f"db app on port {os.environ['PORT']}", flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""

DOCKERFILE = """\
FROM moorage/postgres:15
# Not a database: no entrypoint, no pg_isready health check; the platform checks /healthz.
ENTRYPOINT []
HEALTHCHECK NONE
COPY app.py /app/app.py
CMD ["python3", "-u", "/app/app.py"]
"""


@dataclass
class World:
    platform: Platform
    b: Caller
    b_name: str
    logs: io.StringIO
    app: Litestar

    @property
    def a(self) -> Caller:
        return self.platform.tenant

    def http(self, path: str, timeout: float = 30.0) -> httpx.Response:
        return httpx.get(self.platform.traefik.url + path, headers={"Host": self.platform.host(APP_NAME)}, timeout=timeout)

    def wait(self, path: str, field: str, done: set[str], timeout: float = 240.0) -> dict[str, Any]:
        deadline, body = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            body = self.a.get(path).json()
            if body.get(field) in done:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{path} never reached {done}: {body}")


def _remove_volumes(tenant: str) -> None:
    client = docker.from_env()
    for volume in client.volumes.list(filters={"label": f"moorage.tenant={tenant}"}):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)
    client.close()


@pytest.fixture(scope="module")
def world(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    a_name, b_name = f"e2e-dba-{RUN_ID}", f"e2e-dbb-{RUN_ID}"
    # Three workers, three jobs of a tenant at once: both databases provision beside the build.
    settings = e2e_settings(
        tmp_path_factory.mktemp("e2e-db-data"),
        traefik,
        job_workers=3,
        deploys_per_tenant=3,
        health_timeout_s=60,
        database_backup_min_interval_s=1,  # a schedule of seconds, so the test sees several firings
    )
    app = create_app(settings)
    logs = io.StringIO()
    handler = attach_stream(logs)  # every log line the control plane writes, as rendered JSON
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e-db").token)
            callers = []
            for name in (a_name, b_name):
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "e2e"}).json()
                callers.append(Caller(client, key["token"], key["id"], tenant["id"]))
            platform = Platform(app, client, callers[0], a_name, traefik)
            yield World(platform, callers[1], b_name, logs, app)
    finally:
        logging.getLogger().removeHandler(handler)
        for name in (a_name, b_name):
            cleanup_tenant(name)
            _remove_volumes(name)


@pytest.fixture(scope="module")
def provisioned(world: World) -> dict[str, dict[str, Any]]:
    """Both databases requested, the app created, linked and deployed, all at once; then waited for."""
    a = world.a
    started = time.monotonic()
    pg = a.post("/v1/databases", json={"name": "orders", "engine": "postgres"})
    cache = a.post("/v1/databases", json={"name": "cache", "engine": "redis", "memory_mb": 128})
    assert pg.status_code == 202 and cache.status_code == 202, (pg.text, cache.text)
    assert pg.json()["status"] == "provisioning" and pg.headers["location"] == f"/v1/databases/{pg.json()['id']}"
    assert a.post("/v1/apps", json={"name": APP_NAME, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    links = [a.post(f"/v1/apps/{APP_NAME}/links", json={"database": name}) for name in ("orders", "cache")]
    assert [r.status_code for r in links] == [201, 201], [r.text for r in links]
    assert [r.json()["env_name"] for r in links] == ["DATABASE_URL", "REDIS_URL"]
    # The links hold the URLs from the start: the release gets them while the databases still
    # provision (the app's /healthz touches neither), and the tests below wait for both.
    dep = world.platform.deploy(APP_NAME, tar_gz({"app.py": APP, "Dockerfile": DOCKERFILE}))
    dbs = {name: world.wait(f"/v1/databases/{name}", "status", {"available", "failed"}) for name in ("orders", "cache")}
    provision_s = time.monotonic() - started
    assert all(d["status"] == "available" for d in dbs.values()), dbs
    body = world.platform.wait(APP_NAME, dep, timeout=240)
    assert body["status"] == "running", body
    print(f"\nprovisioned postgres+redis in {provision_s:.1f}s; deployed {time.monotonic() - started - provision_s:.1f}s later")
    return {**dbs, "deployment": body}


def test_linked_app_reads_and_writes_both_databases_through_traefik(world: World, provisioned: dict) -> None:
    assert world.http("/env").text.strip() == "DATABASE_URL,REDIS_URL"
    assert world.http("/pg/write/alpha").status_code == 200
    read = world.http("/pg/read")
    assert (read.status_code, read.text.strip()) == (200, "alpha")
    assert world.http("/redis/set/beta").status_code == 200
    assert world.http("/redis/get").text.strip() == "beta"
    # What the release recorded: the env version bumped by the two links; where the app connects.
    [release] = world.a.get(f"/v1/apps/{APP_NAME}/releases").json()["items"]
    assert release["env_version"] == 2
    conn = world.a.get("/v1/databases/orders/connection").json()
    assert conn["host"] == "db-orders" and conn["port"] == 5432 and ":***@db-orders:5432/" in conn["url"]
    # Sandboxed like any container: runsc, the tenant network only, its memory limit, a named volume.
    client = docker.from_env()
    [pg] = client.containers.list(filters={"label": [f"moorage.tenant={world.platform.tenant_name}", "db.moorage/name=orders"]})
    host = pg.attrs["HostConfig"]
    assert host["Runtime"] == "runsc" and host["Memory"] == 512 * 2**20 and not host.get("PortBindings")
    assert list(pg.attrs["NetworkSettings"]["Networks"]) == [f"moorage-t-{world.platform.tenant_name}"]
    assert any(m["Type"] == "volume" for m in pg.attrs["Mounts"])


def _backup(world: World, db: str) -> dict[str, Any]:
    r = world.a.post(f"/v1/databases/{db}/backups")
    assert r.status_code == 202, r.text
    done = world.wait(f"/v1/databases/{db}/backups/{r.json()['id']}", "status", {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    return done


def _restore(world: World, db: str, backup: dict[str, Any]) -> dict[str, Any]:
    r = world.a.post(f"/v1/databases/{db}/backups/{backup['id']}/restore", json={"target": db})
    assert r.status_code == 202, r.text
    return world.wait(r.headers["location"], "status", {"succeeded", "failed"})


def _corrupt(world: World, backup: dict[str, Any]) -> None:
    services = world.app.state.services.databases.backups
    path: Path = services.path_of(services.load(backup["id"]))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_postgres_backup_drop_restore_and_corrupt_backup_refused(world: World, provisioned: dict) -> None:
    world.http("/pg/write/gamma")
    started = time.monotonic()
    backup = _backup(world, "orders")
    backup_s = time.monotonic() - started
    listed = world.a.get("/v1/databases/orders/backups").json()["items"]
    assert [(b["id"], b["status"]) for b in listed][-1] == (backup["id"], "succeeded")
    assert backup["size"] > 0 and backup["checksum"].startswith("sha256:")
    download = world.a.get(f"/v1/databases/orders/backups/{backup['id']}/download")
    assert download.status_code == 200 and "sha256:" + hashlib.sha256(download.content).hexdigest() == backup["checksum"]

    assert world.http("/pg/drop").status_code == 200
    assert world.http("/pg/read").status_code == 500  # the table is gone
    started = time.monotonic()
    restored = _restore(world, "orders", backup)
    restore_s = time.monotonic() - started
    assert restored["status"] == "succeeded", restored
    assert world.http("/pg/read").text.strip() == "alpha,gamma"

    corrupt = _backup(world, "orders")
    _corrupt(world, corrupt)
    world.http("/pg/write/delta")  # after the backup: a restore of it would remove this row
    refused = _restore(world, "orders", corrupt)
    assert refused["status"] == "failed"
    assert "checksum mismatch" in refused["reason"] and "was not touched" in refused["reason"], refused
    assert world.http("/pg/read").text.strip() == "alpha,delta,gamma"  # untouched
    print(f"\npostgres backup {backup_s:.1f}s ({backup['size']} bytes), restore {restore_s:.1f}s")


def test_redis_backup_restore_and_corrupt_backup_refused(world: World, provisioned: dict) -> None:
    world.http("/redis/set/kept")
    backup = _backup(world, "cache")
    world.http("/redis/set/overwritten")
    assert _restore(world, "cache", backup)["status"] == "succeeded"
    assert world.http("/redis/get").text.strip() == "kept"  # restarted with the old snapshot, same hostname
    corrupt = _backup(world, "cache")
    _corrupt(world, corrupt)
    world.http("/redis/set/current")
    refused = _restore(world, "cache", corrupt)
    assert refused["status"] == "failed" and "checksum mismatch" in refused["reason"], refused
    assert world.http("/redis/get").text.strip() == "current"


def test_a_scheduled_postgres_backup_keeps_exactly_n(world: World, provisioned: dict) -> None:
    a, kept = world.a, 2
    r = a.patch("/v1/databases/orders", json={"backup_schedule": "*/2 * * * * *", "backup_retention": kept})
    assert r.status_code == 200 and r.json()["next_backup_at"], r.text
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while len(seen) < kept + 3 and time.monotonic() < deadline:  # more firings than are kept
        items = a.get("/v1/databases/orders/backups").json()["items"]
        seen |= {b["id"] for b in items if b["trigger"] == "schedule" and b["status"] == "succeeded"}
        time.sleep(0.3)
    assert len(seen) >= kept + 3, f"only {len(seen)} scheduled backups succeeded in 90 s"
    assert a.patch("/v1/databases/orders", json={"backup_schedule": None}).json()["next_backup_at"] is None
    for b in a.get("/v1/databases/orders/backups").json()["items"]:  # one may still be running: let it end
        world.wait(f"/v1/databases/orders/backups/{b['id']}", "status", {"succeeded", "failed"})
    items = a.get("/v1/databases/orders/backups").json()["items"]
    succeeded = [b for b in items if b["status"] == "succeeded"]
    assert len(succeeded) == kept and all(b["trigger"] == "schedule" for b in succeeded), items
    folder = world.app.state.services.settings.data_dir / "backups" / world.a.tenant_id / provisioned["orders"]["id"]
    assert sorted(p.name for p in folder.glob("*.pgdump")) == sorted(f"{b['id']}.pgdump" for b in succeeded)
    newest = a.get(f"/v1/databases/orders/backups/{succeeded[-1]['id']}/download")
    assert newest.status_code == 200 and b"PGDMP" in newest.content[:16]  # a real pg_dump custom-format file
    print(f"\n{len(seen)} scheduled postgres backups succeeded; {kept} kept, on disk and listed")


def test_tenant_b_can_neither_reach_nor_see_tenant_a_databases(world: World, provisioned: dict) -> None:
    runtime = world.app.state.services.deploys.runtime
    b_net = runtime.networks.ensure(world.b_name).name
    probe = runtime.containers.run(
        ContainerSpec(
            tenant=world.b_name,
            app="probe",
            image=PYTHON,
            network=b_net,
            name=f"moorage-e2e-probe-{RUN_ID}",
            command=["sleep", "300"],
        ),
        runtime.policy,
    )
    try:
        client = docker.from_env()
        attempts = []
        for name, port in (("orders", 5432), ("cache", 6379)):
            [c] = client.containers.list(
                filters={"label": [f"moorage.tenant={world.platform.tenant_name}", f"db.moorage/name={name}"]}
            )
            ip = c.attrs["NetworkSettings"]["Networks"][f"moorage-t-{world.platform.tenant_name}"]["IPAddress"]
            attempts += [(name, host, port) for host in (ip, f"db-{name}")]
        # All at once: a dropped connection waits out its whole timeout.
        with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
            results = list(
                pool.map(lambda a: runtime.containers.exec(probe.id, ["python3", "-c", CONNECT, a[1], str(a[2])]), attempts)
            )
        for (name, host, _), result in zip(attempts, results, strict=True):
            assert result.exit_code != 0 and "blocked" in result.output, f"B reached A's {name} at {host}: {result.output}"
    finally:
        runtime.containers.remove(probe.id, force=True)
    a_db = provisioned["orders"]
    for path in (
        f"/v1/databases/{a_db['id']}",
        "/v1/databases/orders",
        f"/v1/databases/{a_db['id']}/connection?reveal=true",
        f"/v1/databases/{a_db['id']}/backups",
    ):
        assert world.b.get(path).status_code == 404, path
    assert world.b.get("/v1/databases").json()["items"] == []
    assert world.b.post("/v1/apps", json={"name": "thief"}).status_code == 201
    assert world.b.post("/v1/apps/thief/links", json={"database": a_db["id"]}).status_code == 404


def test_credentials_never_appear_in_logs_listings_or_audit(world: World, provisioned: dict) -> None:
    a = world.a
    secrets = []
    for name in ("orders", "cache"):
        revealed = a.get(f"/v1/databases/{name}/connection?reveal=true")  # an admin key
        assert revealed.status_code == 200 and revealed.json()["revealed"] is True
        url = revealed.json()["url"]
        secrets.append(url.split(":", 2)[2].split("@", 1)[0])
    assert all(len(s) >= 24 for s in secrets)
    texts = {
        "control-plane logs": world.logs.getvalue(),
        "build log": a.get(f"/v1/apps/{APP_NAME}/deployments/{provisioned['deployment']['id']}/logs").text,
        "app log": a.get(f"/v1/apps/{APP_NAME}/logs?tail=200").text,
        "database listing": a.get("/v1/databases").text,
        "database": a.get("/v1/databases/orders").text,
        "masked connection": a.get("/v1/databases/orders/connection").text,
        "links": a.get(f"/v1/apps/{APP_NAME}/links").text,
        "env": a.get(f"/v1/apps/{APP_NAME}/env").text,
        "backups": a.get("/v1/databases/orders/backups").text + a.get("/v1/databases/cache/backups").text,
        "audit": a.get("/v1/audit?limit=200").text,
        "releases": a.get(f"/v1/apps/{APP_NAME}/releases").text,
    }
    assert len(texts["control-plane logs"]) > 1000 and "database_available" in texts["control-plane logs"]
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a database password appears in the {where}"
    assert "GET /v1/databases/{db}/connection?reveal=true" in texts["audit"]  # reveals are audited


def test_delete_keeps_the_volume_for_the_grace_period_and_purge_removes_it(world: World, provisioned: dict) -> None:
    a, client = world.a, docker.from_env()
    tenant = world.platform.tenant_name
    volume = f"moorage-{a.get('/v1/databases/cache').json()['id']}"
    linked = a.delete("/v1/databases/cache")
    assert linked.status_code == 409 and linked.json()["code"] == "database-linked"
    assert a.delete("/v1/databases/cache?force=true").status_code == 202
    gone = world.wait("/v1/databases/cache", "status", {"deleted", "failed"}, timeout=120)
    assert gone["status"] == "deleted" and gone["volume_kept_until"], gone
    assert not client.containers.list(all=True, filters={"label": [f"moorage.tenant={tenant}", "db.moorage/name=cache"]})
    client.volumes.get(volume)  # kept
    assert [lk["env_name"] for lk in a.get(f"/v1/apps/{APP_NAME}/links").json()["items"]] == ["DATABASE_URL"]
    # The grace period ends (moved into the past here): the sweep purges the volume and the backups.
    services = world.app.state.services.databases
    with services.databases.db.write() as session:
        session.get(DatabaseRow, gone["id"]).purge_after = utcnow()
    assert services.jobs.sweep() == [gone["id"]]
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)
    assert a.get("/v1/databases/cache").status_code == 404
    assert not (world.app.state.services.settings.data_dir / "backups" / a.tenant_id / gone["id"]).exists()
