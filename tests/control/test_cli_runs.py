"""``moorage run``, ``runs`` and ``cron`` against a live server whose ``run`` jobs go to the
runtime port's fake: the command after ``--``, ``--wait`` exiting with the command's own
exit code (124 past its timeout), output on stdout or (with ``--json``) stderr, the shapes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.cli.main import main
from control.domain.runs import RUN_JOB
from control.jobs.runs import RunJob
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.workers import JobKind, WorkerPool
from tests.live_server import cli_tenant

IMAGE = "sha256:" + "cd" * 32


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryAppRuntime]:
    """Tenant acme's app ``web``, deployed (a current release), its runs on the fake."""
    with cli_tenant(tmp_path / "data", monkeypatch, cron_tick_ms=0) as served:
        services = served.app.state.services
        assert main(["apps", "create", "web", "--json"]) == 0
        [tenant_id] = services.tenants.ids()  # acme, the only one
        app = services.apps.get(tenant_id, "web")
        release = services.deploys.releases.create(
            tenant_id=app.tenant_id,
            app_id=app.id,
            deployment_id="dep_cli",
            image_id=IMAGE,
            image_tag="web:cli",
            env_version=0,
            port=8080,
            health_check_path="/",
        )
        services.deploys.releases.make_current(release, [("c" * 64, "web-cli")])
        runtime = InMemoryAppRuntime()
        runtime.images[IMAGE] = "web:cli"
        job = RunJob(
            services.runs.runs,
            services.deploys.releases,
            services.env_vars,
            runtime,
            tenant_name=services.tenants.name,
            output_max_bytes=services.settings.run_output_max_bytes,
        )
        workers = WorkerPool(services.deploys.queue, {RUN_JOB: JobKind(job, job.give_up)}, count=1, poll_s=0.05)
        workers.start()
        try:
            yield runtime
        finally:
            workers.stop()


def test_run_wait_json_exits_with_the_commands_code_output_on_stderr(
    fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script_runs(output=["hello from the release"], exit_code=3)
    code = main(["run", "web", "--wait", "--json", "--", "sh", "-c", "echo --json; exit 3"])
    captured = capsys.readouterr()
    run = json.loads(captured.out)  # stdout: exactly one JSON document
    assert code == 3 and run["status"] == "failed" and run["exit_code"] == 3
    assert run["command"] == ["sh", "-c", "echo --json; exit 3"]  # everything after --, options included
    assert "hello from the release" in captured.err and "hello" not in captured.out


def test_run_wait_prints_the_output_on_stdout_and_exits_0(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    fake.script_runs(output=["line one", "line two"])
    assert main(["run", "web", "--wait", "--", "python", "manage.py", "check"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "line one\nline two\n" and "--> succeeded (exit 0)" in captured.err


def test_run_wait_past_its_timeout_exits_124(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    fake.script_runs(duration_s=math.inf)
    assert main(["run", "web", "--timeout", "1", "--wait", "--json", "--", "sleep", "60"]) == 124
    assert json.loads(capsys.readouterr().out)["status"] == "timed_out"


def test_run_without_wait_prints_the_queued_run_and_runs_logs_show_it(
    fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script_runs(output=["done"])
    assert main(["run", "web", "--json", "--", "true"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] in ("queued", "running", "succeeded") and run["trigger"] == "api"
    assert main(["run", "web", "--wait", "--json", "--", "true"]) == 0  # the tenant's jobs run one at a time
    capsys.readouterr()
    assert main(["runs", "list", "web", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 2 and listed[1]["id"] == run["id"]  # newest first
    assert main(["logs", "web", "--run", run["id"], "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert (log["source"], log["run"], log["lines"]) == ("run", run["id"], ["done"])
    assert main(["runs", "get", "web", run["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"


def test_run_needs_a_command_after_dashes(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "web", "--json"]) == 2
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"] == "usage"


def test_cron_commands_shapes(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cron", "create", "web", "nightly", "--schedule", "0 3 * * *", "--timeout", "60", "--json", "--", "python", "x.py"]
    assert main(argv) == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["name"], made["command"], made["timeout_s"], made["enabled"]) == ("nightly", ["python", "x.py"], 60, True)
    assert main(["cron", "disable", "web", "nightly", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["next_fire_at"] is None
    assert main(["cron", "enable", "web", "nightly", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["enabled"] is True
    assert main(["cron", "list", "web", "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["nightly"]
    assert main(["cron", "create", "web", "bad", "--schedule", "61 * * * *", "--json", "--", "true"]) == 8
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["errors"][0]["field"] == "schedule"
    assert main(["runs", "list", "web", "--cron", "nightly", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["cron", "delete", "web", "nightly", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "nightly", "app": "web"}
    assert main(["cron", "get", "web", "nightly", "--json"]) == 4
