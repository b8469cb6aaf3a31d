"""Environments (sandboxes) against the real engine and runsc: an agent's loop (create, push
a small Python project, run its tests with the exit code captured, pull a result file), exec
timeout (every process it started is gone afterwards), truncation, ten concurrent execs, a
lease that runs out during an exec, and expiry: afterwards the container, its endpoint on
the tenant's network and the row are gone, as docker and the API see them."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from litestar.testing import TestClient

from control.app import create_app
from control.jobs.environment_names import environment_container_name
from control.store.models import EnvironmentRow
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import PYTHON, RUN_ID

pytestmark = pytest.mark.docker
OUTPUT_MAX = 4096
PROJECT = {
    "calc/__init__.py": b"def add(a, b):\n    return a + b\n",
    "tests/__init__.py": b"",
    "tests/test_calc.py": (
        b"import unittest\n"
        b"from calc import add\n\n"
        b"class T(unittest.TestCase):\n"
        b"    def test_add(self):\n"
        b"        self.assertEqual(add(2, 3), 5)\n\n"
        b"    def test_report(self):\n"
        b"        with open('/workspace/out/report.txt', 'w') as f:\n"
        b"            f.write('all good\\n')\n"
    ),
}


@pytest.fixture(scope="module")
def platform(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tenant_name = f"sandbox-{RUN_ID}"
    settings = e2e_settings(tmp_path_factory.mktemp("sandboxes"), traefik, environment_output_max_bytes=OUTPUT_MAX)
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            yield Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik)
    finally:
        cleanup_tenant(tenant_name)


def create(platform: Platform, **body: Any) -> dict[str, Any]:
    response = platform.tenant.post("/v1/environments", json={"image": PYTHON, "cpu": 0.5, "memory_mb": 256, **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def run(platform: Platform, env_id: str, command: list[str], **body: Any) -> dict[str, Any]:
    response = platform.tenant.post(f"/v1/environments/{env_id}/exec", json={"command": command, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, time.time()
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def container(env_id: str) -> Any:
    client = docker.from_env()
    try:
        return client.containers.get(environment_container_name(env_id))
    except docker.errors.NotFound:
        return None
    finally:
        client.close()


def network_endpoints(platform: Platform) -> set[str]:
    client = docker.from_env()
    try:
        network = client.networks.get(f"moorage-t-{platform.tenant_name}")
        return {c["Name"] for c in (network.attrs.get("Containers") or {}).values()}
    finally:
        client.close()


def processes(platform: Platform, env_id: str) -> str:
    listing = 'for d in /proc/[0-9]*; do tr "\\000" " " < $d/cmdline 2>/dev/null; echo; done'
    return str(run(platform, env_id, ["sh", "-c", listing])["stdout"])


def test_an_agent_pushes_a_project_runs_its_tests_and_pulls_the_result(platform: Platform) -> None:
    started = time.monotonic()
    env = create(platform)
    ready_s = time.monotonic() - started
    c = container(env["id"])
    assert c is not None and c.attrs["HostConfig"]["Runtime"] == "runsc"
    host = c.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 2**20 and host["CapDrop"] == ["ALL"]
    assert c.labels["moorage.role"] == "environment" and c.labels["moorage.tenant"] == platform.tenant_name
    assert environment_container_name(env["id"]) in network_endpoints(platform)
    metered = [u for u in platform.app.state.services.deploys.runtime.container_usage() if u.container_id == c.id]
    assert [u.role for u in metered] == ["environment"] and metered[0].tenant == platform.tenant_name  # metered as compute

    url = f"/v1/environments/{env['id']}/files?path=/workspace"
    pushed = platform.tenant.request("PUT", url, content=tar_gz(PROJECT), headers={"content-type": "application/gzip"})
    assert pushed.status_code == 200, pushed.text
    assert run(platform, env["id"], ["mkdir", "-p", "/workspace/out"])["exit_code"] == 0
    tests = run(platform, env["id"], ["python3", "-m", "unittest", "-v"], timeout_s=120, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert tests["exit_code"] == 0, tests
    assert "test_add" in tests["stderr"] and "OK" in tests["stderr"]
    broken = platform.tenant.request(
        "PUT",
        url,
        content=tar_gz({"calc/__init__.py": b"def add(a, b):\n    return a - b\n"}),
        headers={"content-type": "application/gzip"},
    )
    assert broken.status_code == 200
    assert "a - b" in run(platform, env["id"], ["cat", "calc/__init__.py"])["stdout"]
    failing = run(platform, env["id"], ["python3", "-m", "unittest"], timeout_s=120)
    assert failing["exit_code"] == 1 and "FAILED" in failing["stderr"]

    pulled = platform.tenant.get(f"/v1/environments/{env['id']}/files?path=/workspace/out/report.txt")
    assert pulled.status_code == 200, pulled.text
    with tarfile.open(fileobj=io.BytesIO(pulled.content), mode="r:gz") as tar:
        member = tar.extractfile("report.txt")
        assert member is not None and member.read() == b"all good\n"
    io_check = run(
        platform, env["id"], ["sh", "-c", 'cat; echo "$GREETING" >&2; pwd'], stdin="from stdin\n", env={"GREETING": "hi"}
    )
    assert io_check["stdout"] == "from stdin\n/workspace\n" and io_check["stderr"] == "hi\n"
    assert platform.tenant.delete(f"/v1/environments/{env['id']}").status_code == 204
    assert container(env["id"]) is None
    print(f"\nenvironment ready to exec in {ready_s:.2f}s (cold, runsc)")


def test_a_timed_out_exec_is_killed_with_every_process_it_started(platform: Platform) -> None:
    env = create(platform)
    result = run(platform, env["id"], ["sh", "-c", "sleep 301 & sleep 302 & sleep 303; echo never"], timeout_s=2)
    assert result["timed_out"] is True and result["exit_code"] is None and "never" not in result["stdout"]
    assert 1900 <= result["duration_ms"] < 10_000
    left = processes(platform, env["id"])
    assert "sleep 30" not in left, left
    platform.tenant.delete(f"/v1/environments/{env['id']}")


def test_output_is_cut_and_ten_execs_run_at_once(platform: Platform) -> None:
    env = create(platform)
    big = run(platform, env["id"], ["python3", "-c", "print('x' * 100000)"])
    assert big["truncated"] is True and big["exit_code"] == 0
    assert big["stdout"] == "x" * OUTPUT_MAX + f"\n[stdout cut at {OUTPUT_MAX} bytes]\n"
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: run(platform, env["id"], ["sh", "-c", f"sleep 2; echo {i}"]), range(10)))
    took = time.monotonic() - started
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(10)], results
    assert all(r["exit_code"] == 0 for r in results)
    assert took < 12, f"ten 2-second execs took {took:.1f}s: they did not run at once"
    print(f"\nten concurrent 2 s execs took {took:.2f}s")
    platform.tenant.delete(f"/v1/environments/{env['id']}")


def test_a_lease_that_runs_out_during_an_exec_cuts_it_and_everything_goes(platform: Platform) -> None:
    env = create(platform, lease_s=6)
    assert environment_container_name(env["id"]) in network_endpoints(platform)
    result = run(platform, env["id"], ["sleep", "120"], timeout_s=60)
    assert result["exit_code"] is None and result["timed_out"] is False
    assert "lease ran out" in result["reason"], result
    assert result["duration_ms"] < 15_000
    deadline = time.monotonic() + 15  # the reconciler's interval is 2 s
    while container(env["id"]) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert container(env["id"]) is None
    assert environment_container_name(env["id"]) not in network_endpoints(platform)
    assert platform.tenant.get(f"/v1/environments/{env['id']}").status_code == 404
    events = platform.app.state.services.audit.list(tenant_id=platform.tenant.tenant_id, limit=200, cursor=None).items
    assert any(e.action == "environment.expired" and e.target.endswith(env["id"]) for e in events)


def test_exec_streams_over_sse_from_the_sandbox(platform: Platform) -> None:
    env = create(platform)
    response = platform.tenant.post(
        f"/v1/environments/{env['id']}/exec?stream=true",
        json={"command": ["sh", "-c", "echo one; sleep 1; echo two; echo oops >&2; exit 7"]},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    assert "".join(text for kind, text in events if kind == "stdout") == "one\ntwo\n"
    assert "".join(text for kind, text in events if kind == "stderr") == "oops\n"
    assert events[-1][0] == "exit" and events[-1][1]["exit_code"] == 7
    platform.tenant.delete(f"/v1/environments/{env['id']}")


def test_nothing_outlives_its_lease_across_a_control_plane_restart(traefik: TraefikProcess, tmp_path: Path) -> None:
    """Expired while the control plane was down, and a container whose row never committed:
    the restarted control plane's first reconciler pass removes both."""
    tenant_name = f"sbr-{RUN_ID}"
    settings = e2e_settings(tmp_path / "data", traefik)
    try:
        first = create_app(settings)
        with TestClient(first, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, first.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            caller = Caller(client, key["token"], key["id"], tenant["id"])
            expiring = caller.post("/v1/environments", json={"image": PYTHON, "cpu": 0.25, "memory_mb": 128, "lease_s": 3})
            orphan = caller.post("/v1/environments", json={"image": PYTHON, "cpu": 0.25, "memory_mb": 128, "lease_s": 600})
            assert expiring.status_code == 201 and orphan.status_code == 201, (expiring.text, orphan.text)
            with first.state.services.db.write() as session:  # as if its row had never committed
                session.delete(session.get(EnvironmentRow, orphan.json()["id"]))
        time.sleep(4)  # the lease ends while nothing runs
        assert container(expiring.json()["id"]) is not None and container(orphan.json()["id"]) is not None
        second = create_app(settings)
        with TestClient(second, raise_server_exceptions=False, timeout=120) as client:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (container(expiring.json()["id"]) or container(orphan.json()["id"])):
                time.sleep(0.2)
            assert container(expiring.json()["id"]) is None and container(orphan.json()["id"]) is None
            caller = Caller(client, key["token"], key["id"], tenant["id"])
            assert caller.get(f"/v1/environments/{expiring.json()['id']}").status_code == 404
            assert caller.get("/v1/environments").json()["items"] == []
    finally:
        cleanup_tenant(tenant_name)
