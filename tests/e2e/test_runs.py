"""One-off runs and a cron schedule against the real engine and runsc: a deployed busybox
app's release runs commands in new sandboxed containers with its env; exit code, output (and
where it is cut), timeout, cancel; a two-second schedule whose command takes three never
runs twice at once. Every container a run made is gone when it ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import docker
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import BUSYBOX, RUN_ID

pytestmark = pytest.mark.docker
OUTPUT_MAX = 4096
DOCKERFILE = f'FROM {BUSYBOX}\nCMD ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p $PORT -h /www"]\n'


@pytest.fixture(scope="module")
def platform(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A deployed app ``tool`` (busybox httpd) with GREETING=hello, in tenant runs-<RUN_ID>."""
    tenant_name = f"runs-{RUN_ID}"
    settings = e2e_settings(tmp_path_factory.mktemp("runs"), traefik, run_output_max_bytes=OUTPUT_MAX, cron_tick_ms=200)
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            platform = Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik)
            c = platform.tenant
            assert c.post("/v1/apps", json={"name": "tool", "port": 8080}).status_code == 201
            assert c.request("PUT", "/v1/apps/tool/env/GREETING", json={"value": "hello"}).status_code == 200
            deployed = platform.wait("tool", platform.deploy("tool", tar_gz({"Dockerfile": DOCKERFILE})))
            assert deployed["status"] == "running", deployed
            yield platform
    finally:
        cleanup_tenant(tenant_name)


def _run(platform: Platform, command: list[str], **fields: Any) -> dict[str, Any]:
    response = platform.tenant.post("/v1/apps/tool/runs", json={"command": command, **fields})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def _wait(platform: Platform, run_id: str, until: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled")) -> dict:
    deadline = time.monotonic() + 60
    while True:
        run = platform.tenant.get(f"/v1/apps/tool/runs/{run_id}").json()
        if run["status"] in until:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def _output(platform: Platform, run_id: str) -> str:
    return platform.tenant.get(f"/v1/apps/tool/runs/{run_id}/logs").text


def _run_containers(platform: Platform) -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(
            all=True, filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.role=run"]}
        )
        return [c.name for c in found]
    finally:
        client.close()


def test_a_run_exits_with_its_code_and_its_output_with_the_apps_env(platform: Platform) -> None:
    run = _run(platform, ["sh", "-c", 'echo "greeting=$GREETING port=$PORT"; echo "to stderr" >&2; exit 3'])
    done = _wait(platform, run["id"])
    assert (done["status"], done["exit_code"], done["release"]) == ("failed", 3, "v1"), done
    assert sorted(_output(platform, run["id"]).splitlines()) == ["greeting=hello port=8080", "to stderr"]
    assert _run_containers(platform) == []
    ok = _wait(platform, _run(platform, ["true"])["id"])
    assert (ok["status"], ok["exit_code"]) == ("succeeded", 0)


def test_output_past_the_bound_is_cut_and_says_so(platform: Platform) -> None:
    done = _wait(platform, _run(platform, ["seq", "1", "5000"])["id"])
    log = _output(platform, done["id"])
    assert done["status"] == "succeeded" and done["output_truncated"] is True and done["output_bytes"] == OUTPUT_MAX
    assert log.startswith("1\n2\n3\n") and log.endswith(f"\n[output cut at {OUTPUT_MAX} bytes]\n") and "\n5000\n" not in log


def test_a_program_the_image_lacks_fails_the_run_saying_so(platform: Platform) -> None:
    done = _wait(platform, _run(platform, ["/no/such/program"])["id"])
    assert done["status"] == "failed" and done["exit_code"] is None and "would not start" in done["reason"], done
    assert _run_containers(platform) == []


def test_a_run_past_its_timeout_is_killed(platform: Platform) -> None:
    run = _run(platform, ["sh", "-c", "echo started; exec sleep 60"], timeout_s=2)
    done = _wait(platform, run["id"])
    assert done["status"] == "timed_out" and done["exit_code"] is None, done
    took = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    assert 2 <= took.total_seconds() < 10
    assert _output(platform, run["id"]) == "started\n" and _run_containers(platform) == []


def test_a_cancelled_run_is_killed(platform: Platform) -> None:
    run = _run(platform, ["sleep", "60"])
    _wait(platform, run["id"], until=("running",))
    assert platform.tenant.post(f"/v1/apps/tool/runs/{run['id']}/cancel").status_code == 202
    done = _wait(platform, run["id"])
    assert done["status"] == "cancelled" and done["exit_code"] is None, done
    assert _run_containers(platform) == []


def test_a_two_second_schedule_never_runs_its_three_second_command_twice_at_once(platform: Platform) -> None:
    c = platform.tenant
    made = c.post("/v1/apps/tool/cron", json={"name": "slow", "schedule": "*/2 * * * * *", "command": ["sleep", "3"]})
    assert made.status_code == 201, made.text
    began = time.monotonic()
    try:
        while True:
            history = c.get("/v1/apps/tool/runs", params={"cron": "slow"}).json()["items"]
            finished = [r for r in history if r["status"] == "succeeded"]
            if len(finished) >= 2:
                break
            assert time.monotonic() - began < 20, history
            time.sleep(0.2)
        schedule = c.get("/v1/apps/tool/cron/slow").json()
    finally:
        assert c.delete("/v1/apps/tool/cron/slow").status_code == 204
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in finished)
    assert spans[0][1] <= spans[1][0], spans  # the second started after the first had ended
    assert schedule["skipped"] >= 1 and "the previous run" in schedule["last_skip_reason"], schedule
    assert {r["trigger"] for r in history} == {"cron:slow"} and schedule["last_run"]["id"] >= history[0]["id"]
    # A third may have fired before the delete: it runs to its end, and nothing is left behind.
    for run in c.get("/v1/apps/tool/runs", params={"cron": "slow"}).json()["items"]:
        _wait(platform, run["id"])
    assert _run_containers(platform) == []
