"""The new CLI commands against a real server (no Docker: job workers off, so deployments
stay queued): JSON shapes, the app URL field (GET/POST /v1/apps), bounded logs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.cli.client.commands import logs as logs_command
from control.cli.main import main
from tests.live_server import cli_tenant


@pytest.fixture
def tenant_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with cli_tenant(tmp_path / "data", monkeypatch) as served:
        yield served.url


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_app_url_deploy_status_releases_logs(tenant_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, app = run_json(capsys, "apps", "create", "web")
    assert code == 0 and app["url"] == "http://web.acme.apps.test"  # type: ignore[index]
    src = tmp_path / "web"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("ref")
    (src / "app.py").write_text("print('hi')\n")
    code, deployed = run_json(capsys, "deploy", str(src))
    assert code == 0 and deployed["app"] == "web" and deployed["url"] == "http://web.acme.apps.test"  # type: ignore[index]
    assert deployed["deployment"]["status"] == "queued"  # type: ignore[index]
    code, status = run_json(capsys, "status", "web")
    assert status["app"]["name"] == "web" and status["release"] is None  # type: ignore[index]
    assert status["deployment"]["id"] == deployed["deployment"]["id"]  # type: ignore[index]
    assert run_json(capsys, "releases", "web") == (0, [])
    code, log = run_json(capsys, "logs", "web", "--deployment", deployed["deployment"]["id"])  # type: ignore[index]
    assert code == 0 and log["source"] == "build" and log["truncated"] is False  # type: ignore[index]
    assert main(["rollback", "web", "--release", "v9", "--json"]) == 4  # no such release


def test_db_commands_shapes(tenant_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, db = run_json(capsys, "db", "create", "main", "--engine", "postgres")
    assert code == 0 and db["status"] == "provisioning" and "password" not in json.dumps(db)  # type: ignore[index]
    code, listed = run_json(capsys, "db", "list")
    assert [d["name"] for d in listed] == ["main"]  # type: ignore[union-attr]
    run_json(capsys, "apps", "create", "api")
    code, link = run_json(capsys, "db", "link", "main", "--app", "api")
    assert code == 0 and link["env_name"] == "DATABASE_URL"  # type: ignore[index]
    code, gone = run_json(capsys, "db", "unlink", "main", "--app", "api")
    assert gone == {"unlinked": link["id"], "app": "api", "database": "main"}  # type: ignore[index]
    assert main(["db", "unlink", "main", "--app", "api", "--json"]) == 4


def test_db_backup_schedule_commands(tenant_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("db", "create", "main", "--engine", "postgres", "--backup-schedule", "0 3 * * *", "--backup-retention", "4")
    code, db = run_json(capsys, *argv)
    assert code == 0 and (db["backup_schedule"], db["backup_retention"]) == ("0 3 * * *", 4)  # type: ignore[index]
    code, changed = run_json(capsys, "db", "backup-schedule", "main", "--cron", "@daily", "--keep", "2")
    assert code == 0 and (changed["backup_schedule"], changed["backup_retention"]) == ("@daily", 2)  # type: ignore[index]
    code, kept = run_json(capsys, "db", "backup-schedule", "main", "--keep", "3")
    assert (kept["backup_schedule"], kept["backup_retention"]) == ("@daily", 3)  # type: ignore[index]
    code, off = run_json(capsys, "db", "backup-schedule", "main", "--off")
    assert code == 0 and off["backup_schedule"] is None and off["next_backup_at"] is None  # type: ignore[index]
    assert main(["db", "backup-schedule", "main", "--cron", "* * * * * *", "--json"]) == 8  # 422: invalid input
    assert "at most every 300 s" in capsys.readouterr().err
    assert main(["db", "backup-schedule", "main", "--json"]) != 0  # nothing to change
    assert "--cron CRON, --off and/or --keep N" in capsys.readouterr().err


def test_logs_are_bounded_with_the_full_text_in_a_file() -> None:
    text = "\n".join(f"line {i}" for i in range(500))
    lines, truncated, full = logs_command.bounded(text, "web")
    assert truncated and len(lines) == logs_command.MAX_LINES and lines[-1] == "line 499"
    assert full and Path(full).read_text() == text


def test_volumes_commands_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from control.jobs.runtime_fake import InMemoryAppRuntime
    from control.jobs.volumes import RuntimeVolumes
    from control.jobs.workers import AppLocks

    with cli_tenant(tmp_path / "data", monkeypatch) as served:
        fake = InMemoryAppRuntime()  # the storage a create makes, without Docker
        served.app.state.services.volumes.storage = RuntimeVolumes(fake, AppLocks())
        run_json(capsys, "apps", "create", "web")
        code, volume = run_json(capsys, "volumes", "create", "web", "data", "--mount-path", "/app/instance", "--size-mb", "64")
        assert code == 0 and volume["mount_path"] == "/app/instance" and volume["size_mb"] == 64  # type: ignore[index]
        assert list(fake.volumes) == [volume["id"]]  # type: ignore[index]
        code, listed = run_json(capsys, "volumes", "list", "web")
        assert code == 0 and [v["name"] for v in listed] == ["data"]  # type: ignore[union-attr]
        assert run_json(capsys, "volumes", "get", "web", "data") == (0, volume)
        assert main(["volumes", "create", "web", "data", "--mount-path", "/other", "--size-mb", "1", "--json"]) == 3
        assert main(["volumes", "create", "web", "more", "--mount-path", "/etc", "--size-mb", "1", "--json"]) == 8
        assert main(["apps", "delete", "web", "--json"]) == 3  # app-has-volumes
        assert run_json(capsys, "volumes", "delete", "web", "data", "--force") == (0, {"deleted": "data", "app": "web"})
        assert fake.volumes == {}
        assert main(["volumes", "get", "web", "data", "--json"]) == 4
        assert run_json(capsys, "volumes", "create", "web", "data", "--mount-path", "/d", "--size-mb", "1")[0] == 0
        assert run_json(capsys, "apps", "delete", "web", "--purge") == (0, {"deleted": "web"})


def test_usage_kinds_print_the_apis_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_tenant(tmp_path / "data", monkeypatch, metering_interval_s=0) as served:
        tenant_id = served.app.state.services.tenants.ids_by_name()["acme"]
        now = time.time()
        served.app.state.services.sampler.record_build(tenant_id, now - 4, now)
        code, builds = run_json(capsys, "usage", "--kind", "builds")
        assert code == 0 and isinstance(builds, dict)
        assert builds["kind"] == "builds" and builds["totals"]["builds"] == 1
        assert builds["totals"]["build_seconds"] == pytest.approx(4.0)
        code, compute = run_json(capsys, "usage", "--kind", "compute")
        assert code == 0 and isinstance(compute, dict)
        assert compute["kind"] == "compute" and set(compute["totals"]) >= {"cpu_seconds", "memory_peak_bytes"}
        code, inference = run_json(capsys, "usage")
        assert code == 0 and isinstance(inference, dict) and inference["kind"] == "inference"
        assert main(["usage", "--kind", "storage"]) == 0  # a table (empty: nothing stored yet)
        capsys.readouterr()
        assert main(["usage", "--operator", "--json"]) == 7  # a tenant key: operator-required
