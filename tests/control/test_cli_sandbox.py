"""``moorage sandbox ...`` against a live server whose environments run on the runtime port's
fake: create, list, show, exec (its output on stdout and stderr, its exit code; 124 past its
timeout), push a directory, pull it back into a local directory, renew, rm, the JSON shapes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.cli.main import main
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.runtime_fake_environments import ExecScript
from tests.live_server import cli_tenant


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryAppRuntime]:
    with cli_tenant(tmp_path / "data", monkeypatch) as served:
        runtime = InMemoryAppRuntime()
        served.app.state.services.environments.runtime = runtime
        yield runtime


def _create(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["sandbox", "create", "--lease", "120", "--cpu", "0.5", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["status"] == "ready" and env["image"] == "moorage/python:3-bookworm" and env["cpu"] == 0.5
    return str(env["id"])


def test_create_list_show_renew_rm(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    env_id = _create(capsys)
    assert main(["sandbox", "list", "--json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [env_id]
    assert main(["sandbox", "show", env_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert main(["sandbox", "renew", env_id, "--lease", "600", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lease_expires_at"] > shown["lease_expires_at"]
    assert main(["sandbox", "rm", env_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": env_id}
    assert main(["sandbox", "show", env_id, "--json"]) == 4  # NOT_FOUND
    assert fake.environments == {}


def test_exec_prints_the_output_and_exits_with_the_commands_code(
    fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    env_id = _create(capsys)
    fake.on_exec = lambda call: ExecScript(stdout=b"2 passed\n", stderr=b"warning\n", exit_code=5)
    assert main(["sandbox", "exec", env_id, "--env", "CI=1", "--workdir", "/workspace/app", "--", "pytest", "-q", "--x"]) == 5
    captured = capsys.readouterr()
    assert captured.out == "2 passed\n" and captured.err == "warning\n"
    container = fake.environment_of(env_id)
    assert container is not None and container.execs[-1].command == ("pytest", "-q", "--x")
    assert container.execs[-1].env == {"CI": "1"} and container.execs[-1].workdir == "/workspace/app"
    assert main(["sandbox", "exec", env_id, "--json", "--", "true"]) == 5
    assert json.loads(capsys.readouterr().out)["stdout"] == "2 passed\n"


def test_exec_past_its_timeout_exits_124(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    env_id = _create(capsys)
    fake.on_exec = lambda call: ExecScript(duration_s=math.inf)
    assert main(["sandbox", "exec", env_id, "--timeout", "1", "--", "sleep", "60"]) == 124
    assert "timeout of 1s" in capsys.readouterr().err


def test_push_a_directory_then_pull_it_back(fake: InMemoryAppRuntime, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    env_id = _create(capsys)
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "main.py").write_text("print(1)\n")
    (project / "tests" / "test_main.py").write_text("def test(): pass\n")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref\n")
    assert main(["sandbox", "push", env_id, str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == "/workspace"
    container = fake.environment_of(env_id)
    assert container is not None and sorted(container.files) == ["/workspace/main.py", "/workspace/tests/test_main.py"]
    out = tmp_path / "out"
    assert main(["sandbox", "pull", env_id, "/workspace/tests", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dest"] == str(out)
    assert (out / "tests" / "test_main.py").read_text() == "def test(): pass\n"
    assert main(["sandbox", "pull", env_id, "/workspace/nothing", str(out)]) == 4
