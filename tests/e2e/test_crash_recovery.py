"""Issue #5 acceptance 3: SIGKILL the control plane (a real `python -m control.cli.main
serve` process) while a deployment is building, start it again: the deployment ends
`running` or `failed` with a reason, never stuck, and no orphan containers remain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from runtime.traefik import TraefikProcess, free_loopback_port
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import TERMINAL, cleanup_tenant
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, data_dir: Path, traefik: TraefikProcess) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "MOORAGE_DATA_DIR": str(data_dir), "MOORAGE_PORT": str(self.port),
            "MOORAGE_BASE_DOMAIN": "apps.test", "MOORAGE_TRAEFIK_DYNAMIC_DIR": str(traefik.dynamic_dir),
            "MOORAGE_TRAEFIK_URL": traefik.url, "MOORAGE_JOB_LEASE_S": "3", "MOORAGE_RECONCILE_INTERVAL_S": "2",
            "MOORAGE_HEALTH_TIMEOUT_S": "30", "MOORAGE_SWAP_DRAIN_MS": "200",
        }
        self.log = data_dir.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "control.cli.main", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "control.cli.main", "serve"], env=self.env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path: Path, traefik: TraefikProcess) -> Iterator[Server]:
    srv = Server(tmp_path / "data", traefik)
    yield srv
    srv.kill()
    if srv.proc and srv.proc.poll() is None:
        srv.proc.terminate()


def test_sigkill_mid_build_then_restart_never_leaves_it_stuck(server: Server, tmp_path: Path) -> None:
    tenant_name = f"crash-{RUN_ID}"
    key_file = tmp_path / "operator.key"
    server.cli("admin", "bootstrap", "--output-file", str(key_file))
    operator = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    server.start()
    try:
        api = httpx.Client(base_url=server.url, timeout=30)
        tenant = api.post("/v1/tenants", json={"name": tenant_name}, headers=operator).json()
        token = api.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}, headers=operator).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        assert api.post("/v1/apps", json={"name": "slow"}, headers=auth).status_code == 201
        slow = tar_gz(source(f"crash-{RUN_ID}", extra_steps="RUN echo slow-step-started && sleep 12\n"))
        dep = api.post("/v1/apps/slow/deployments", content=slow, headers={**auth, "Content-Type": "application/gzip"}).json()["id"]
        deadline = time.monotonic() + 120
        while "slow-step-started" not in api.get(f"/v1/apps/slow/deployments/{dep}/logs", headers=auth).text:
            assert time.monotonic() < deadline, "the slow build step never started"
            time.sleep(0.2)
        assert api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()["status"] == "building"
        server.kill()  # mid-build: no chance to clean up or record anything

        server.start()
        killed_at = time.monotonic()
        body: dict = {}
        while time.monotonic() - killed_at < 150:
            body = api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()
            if body["status"] in TERMINAL:
                break
            time.sleep(0.5)
        print(f"\nafter restart: {body['status']} in {time.monotonic() - killed_at:.1f}s; transitions "
              f"{[(t['status'], t.get('reason')) for t in body['transitions']]}")
        assert body["status"] in {"running", "failed"}, body
        if body["status"] == "failed":
            assert body["reason"]
        else:
            assert [t["status"] for t in body["transitions"]].count("building") == 2  # retried after the crash
            r = httpx.get(server.env["MOORAGE_TRAEFIK_URL"] + "/", headers={"Host": f"slow.{tenant_name}.apps.test"})
            assert r.status_code == 200 and f"crash-{RUN_ID}" in r.text
        time.sleep(3)  # a reconcile period: orphans, if any, would be gone by now
        client = docker.from_env()
        containers = client.containers.list(all=True, filters={"label": f"moorage.tenant={tenant_name}"})
        expected = 1 if body["status"] == "running" else 0
        assert len(containers) == expected, [(c.name, c.status) for c in containers]
        assert all(c.status == "running" for c in containers)
    finally:
        server.kill()
        cleanup_tenant(tenant_name)
