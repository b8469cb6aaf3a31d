"""An install made by the code before id-based names upgrades in place.

The previous release (``LEGACY_COMMIT``, the last one that named databases
``moorage-db-{tenant}-{name}`` and routes ``tenant--app.yml``) really runs here, from git, on a
data dir and a Traefik directory of its own: it deploys an app and provisions a Redis database
holding data. Then this code starts on the same data dir and:

- the app keeps serving 200 throughout, its route moves to the id-keyed file and the old file
  goes;
- the database stays reachable under its old container and volume names (found by labels):
  a backup holds the old data, and purging it removes the old volume;
- nothing the upgrade left behind belongs to no live app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.conftest import cleanup_tenant, e2e_settings, traefik  # noqa: F401 (fixture)
from tests.runtime.helpers import PAST_TRAEFIK_THROTTLE_S, RUN_ID
from tests.security.host_watch import HostWatch

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LEGACY_COMMIT = "baacbbb"
REPO = Path(__file__).resolve().parents[2]
TENANT = f"up-{RUN_ID}"
SECRET = "kept-across-upgrade"

# Runs under the previous release's code (PYTHONPATH): makes the install, prints what it made.
LEGACY_INSTALL = r"""
import json, sys, time
from pathlib import Path
from urllib.parse import urlsplit
from litestar.testing import TestClient
from control.app import create_app
from control.settings import Settings
from tests.e2e.apps import source, tar_gz
import docker

data_dir, dynamic_dir, traefik_url, tenant_name, secret = sys.argv[1:6]
settings = Settings(data_dir=Path(data_dir), base_domain="apps.test", traefik_dynamic_dir=Path(dynamic_dir),
                    traefik_url=traefik_url, reconcile_interval_s=2, health_timeout_s=30, swap_drain_ms=200,
                    job_lease_s=10, rate_limit_key_quota=100000, rate_limit_tenant_quota=100000,
                    deploys_per_tenant=2)  # the database provisions while the app deploys
app = create_app(settings)

def wait(caller_get, path, field, done):
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = caller_get(path).json()
        if body.get(field) in done:
            return body
        time.sleep(0.3)
    raise SystemExit(f"{path} never reached {done}: {body}")

with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
    op = {"Authorization": "Bearer " + app.state.services.keys.bootstrap_operator("upgrade").token}
    tenant = client.post("/v1/tenants", json={"name": tenant_name}, headers=op).json()
    key = client.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "up"}, headers=op).json()
    h = {"Authorization": "Bearer " + key["token"]}
    get = lambda path: client.get(path, headers=h)
    assert client.post("/v1/apps", json={"name": "web", "port": 8080}, headers=h).status_code == 201
    dep = client.post("/v1/apps/web/deployments", content=tar_gz(source("legacy")),
                      headers={**h, "Content-Type": "application/gzip"}).json()
    assert client.post("/v1/databases", json={"name": "cache", "engine": "redis", "memory_mb": 64}, headers=h).status_code == 202
    assert wait(get, f"/v1/apps/web/deployments/{dep['id']}", "status", {"running", "failed"})["status"] == "running"
    db = wait(get, "/v1/databases/cache", "status", {"available", "failed"})
    assert db["status"] == "available", db
    url = get("/v1/databases/cache/connection?reveal=true").json()["url"]
    password = urlsplit(url).password
    container = docker.from_env().containers.get(f"moorage-db-{tenant_name}-cache")
    out = container.exec_run(["redis-cli", "--no-auth-warning", "-a", password, "SET", "secret", secret]).output
    assert out.strip() == b"OK", out
    container.exec_run(["redis-cli", "--no-auth-warning", "-a", password, "SAVE"])
    print(json.dumps({"token": key["token"], "database": db["id"],
                      "app": get("/v1/apps/web").json()["id"]}))
"""


def _legacy_tree(tmp: Path) -> Path:
    """The previous release's source, unpacked from git (a fresh clone has its history)."""
    tree = tmp / "legacy"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", LEGACY_COMMIT, "control", "runtime", "tests", "migrations"],
        check=False,
        capture_output=True,
    )
    assert archive.returncode == 0, (
        f"git cannot read {LEGACY_COMMIT} ({archive.stderr.decode().strip()}): "
        "this test needs the repository's history (a full clone)"
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


@pytest.fixture(scope="module")
def legacy_install(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("upgrade")
    data_dir = tmp / "data"
    tree = _legacy_tree(tmp)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        made = subprocess.run(
            [sys.executable, "-c", LEGACY_INSTALL, str(data_dir), str(traefik.dynamic_dir), traefik.url, TENANT, SECRET],
            check=False,
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert made.returncode == 0, made.stderr[-3000:]
        yield {**json.loads(made.stdout.strip().splitlines()[-1]), "data_dir": data_dir}
    finally:
        cleanup_tenant(TENANT)
        client = docker.from_env()
        for volume in client.volumes.list(filters={"label": f"moorage.tenant={TENANT}"}):
            volume.remove(force=True)
        client.close()


def test_an_install_of_the_previous_release_keeps_working(legacy_install: dict, traefik: TraefikProcess) -> None:  # noqa: F811
    dynamic = traefik.dynamic_dir
    legacy_route = dynamic / f"{TENANT}--web.yml"
    assert legacy_route.exists(), sorted(p.name for p in dynamic.iterdir())
    client_ = docker.from_env()
    assert client_.volumes.get(f"moorage-db-{TENANT}-cache")  # what the old code made
    host = f"web.{TENANT}.apps.test"
    watch = HostWatch(traefik.url, host).start()
    app = create_app(e2e_settings(legacy_install["data_dir"], traefik, database_purge_interval_s=0))
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            caller = Caller(client, legacy_install["token"])
            new_route = dynamic / f"{legacy_install['app']}.yml"
            deadline = time.monotonic() + 30
            while (legacy_route.exists() or not new_route.exists()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert new_route.exists() and not legacy_route.exists(), sorted(p.name for p in dynamic.iterdir())
            time.sleep(PAST_TRAEFIK_THROTTLE_S)  # past Traefik's reload throttle: the new file serves alone
            watch.stop()
            assert not watch.failures, f"the app failed {len(watch.failures)} times during the upgrade: {watch.failures[:5]}"
            assert caller.get("/v1/apps/web").json()["url"].startswith("http")

            # The database: reachable by its labels under the old names, its data intact.
            assert caller.get("/v1/databases/cache").json()["status"] == "available"
            backup = caller.post("/v1/databases/cache/backups").json()
            deadline = time.monotonic() + 120
            while (done := caller.get(f"/v1/databases/cache/backups/{backup['id']}").json())["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline, done
                time.sleep(0.3)
            assert done["status"] == "succeeded", done
            assert SECRET.encode() in caller.get(f"/v1/databases/cache/backups/{done['id']}/download").content
            report = app.state.services.deploys.reconciler.run_once()
            assert not report.errors and not any("database" in a for a in report.actions), report
            assert client_.containers.get(f"moorage-db-{TENANT}-cache").status == "running"  # a live one: left alone

            assert caller.delete("/v1/databases/cache?purge=true&force=true").status_code == 202
            deadline = time.monotonic() + 60
            while caller.get("/v1/databases/cache").status_code != 404:
                assert time.monotonic() < deadline
                time.sleep(0.3)
            with pytest.raises(docker.errors.NotFound):
                client_.volumes.get(f"moorage-db-{TENANT}-cache")
    finally:
        watch.stop()
        client_.close()
