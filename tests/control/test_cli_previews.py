"""``moorage preview ...`` against a live server whose deploy jobs run the real pipeline on the
runtime port's fake: create from a directory (``--wait`` exits with the deployment's outcome,
the log on stderr with ``--json``) and from git with ``--env``, list, show, rm, each ``--json``
with the API's own shapes; usage errors before any request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.cli.main import main
from control.domain.deployments import DEPLOY_JOB
from control.jobs.deploy import DeployPipeline
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.workers import AppLocks, JobKind, WorkerPool
from tests.git_server import make_repo
from tests.live_server import cli_tenant

DOCKERFILE = 'FROM moorage/python:3-bookworm\nCMD ["python3", "-m", "http.server"]\n'


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryAppRuntime]:
    """Tenant acme's app ``web`` with GREETING=hi; deploys run on the fake."""
    with cli_tenant(tmp_path / "data", monkeypatch, git_file_prefixes=str(tmp_path / "repos")) as served:
        services = served.app.state.services
        runtime = InMemoryAppRuntime()
        services.deploys.teardown.runtime = runtime
        deploys = services.deploys
        pipeline = DeployPipeline(
            services.settings, deploys.deployments, deploys.releases, services.env_vars, runtime, AppLocks()
        )
        workers = WorkerPool(deploys.queue, {DEPLOY_JOB: JobKind(pipeline, pipeline.give_up)}, count=1, poll_s=0.05)
        assert main(["apps", "create", "web", "--json"]) == 0
        assert main(["env", "set", "web", "GREETING=hi", "--json"]) == 0
        workers.start()
        try:
            yield runtime
        finally:
            workers.stop()
            services.deploys.teardown.drain()


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_create_from_a_directory_waits_and_prints_the_preview(
    fake: InMemoryAppRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    site = tmp_path / "site"
    site.mkdir()
    (site / "Dockerfile").write_text(DOCKERFILE)
    assert main(["preview", "create", "web", "--dir", str(site), "--ttl", "600", "--wait", "--json"]) == 0
    captured = capsys.readouterr()
    preview = json.loads(captured.out.strip().splitlines()[-1])
    assert preview["name"].startswith("web--") and preview["status"] == "running" and preview["app"] == "web"
    assert "--> running" in captured.err  # the build log, on stderr with --json
    [container] = fake.running(tenant="acme", app=preview["name"])
    assert container.env["GREETING"] == "hi"

    assert main(["preview", "list", "web", "--json"]) == 0
    assert [p["id"] for p in _json(capsys)] == [preview["id"]]
    assert main(["preview", "show", "web", preview["name"].removeprefix("web--"), "--json"]) == 0
    assert _json(capsys)["id"] == preview["id"]
    assert main(["preview", "rm", "web", preview["id"], "--json"]) == 0
    assert _json(capsys) == {"deleted": preview["id"], "app": "web"}
    assert main(["preview", "show", "web", preview["id"], "--json"]) != 0
    assert "not-found" in capsys.readouterr().err


def test_create_from_git_with_env_overrides(fake: InMemoryAppRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repos", "site", {"Dockerfile": DOCKERFILE})
    capsys.readouterr()
    argv = ["preview", "create", "web", "--git", f"file://{repo}", "--env", "GREETING=preview", "--env", "EXTRA=1", "--wait"]
    assert main([*argv, "--json"]) == 0
    preview = _json(capsys)
    assert preview["deployment"]["source"]["kind"] == "git" and preview["status"] == "running"
    [container] = fake.running(tenant="acme", app=preview["name"])
    assert (container.env["GREETING"], container.env["EXTRA"]) == ("preview", "1")


def test_usage_errors_send_nothing(fake: InMemoryAppRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["preview", "create", "web", "--json"])  # neither --git nor --dir
    with pytest.raises(SystemExit):
        main(["preview", "create", "web", "--git", "file:///x", "--env", "NOEQUALS"])
    with pytest.raises(SystemExit):
        main(["preview", "create", "web", "--dir", str(tmp_path), "--env", "A=1"])
    capsys.readouterr()
    assert main(["preview", "list", "web", "--json"]) == 0
    assert _json(capsys) == []
