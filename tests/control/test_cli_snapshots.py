"""``moorage snapshot ...`` and ``moorage fork`` against a real server (job workers off, so a
snapshot stays pending until the test says otherwise): JSON shapes and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.cli.main import main
from tests.live_server import cli_tenant


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    with cli_tenant(tmp_path / "data", monkeypatch) as server:
        yield server


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_snapshot_commands_shapes_and_exit_codes(served: object, capsys: pytest.CaptureFixture[str]) -> None:
    services = served.app.state.services  # type: ignore[attr-defined]
    code, app = run_json(capsys, "apps", "create", "web")
    assert code == 0
    assert main(["snapshot", "create", "web", "--json"]) == 3  # 409 no-release: never deployed
    assert "no-release" in capsys.readouterr().err
    releases = services.deploys.releases
    release = releases.create(
        tenant_id=services.tenants.ids_by_name()["acme"],
        app_id=app["id"],  # type: ignore[index]
        deployment_id="dep_cli",
        image_id="sha256:" + "ab" * 32,
        image_tag="web:dep_cli",
        env_version=0,
        port=8080,
        health_check_path="/",
    )
    releases.make_current(release, [("c" * 64, "moorage-acme-web-dep_cli")])
    code, snapshot = run_json(capsys, "snapshot", "create", "web")
    assert code == 0 and snapshot["status"] == "pending" and snapshot["release"] == "v1"  # type: ignore[index]
    code, listed = run_json(capsys, "snapshot", "list")
    assert code == 0 and [s["id"] for s in listed] == [snapshot["id"]]  # type: ignore[index, union-attr]
    assert run_json(capsys, "snapshot", "list", "--app", "web")[1] == listed
    code, shown = run_json(capsys, "snapshot", "show", snapshot["id"])  # type: ignore[index]
    assert code == 0 and shown["id"] == snapshot["id"] and shown["files"] == []  # type: ignore[index]
    assert main(["fork", snapshot["id"], "--name", "copy", "--json"]) == 3  # type: ignore[index]  # snapshot-not-ready
    assert "snapshot-not-ready" in capsys.readouterr().err
    assert main(["snapshot", "rm", snapshot["id"], "--json"]) == 3  # type: ignore[index]  # snapshot-busy
    assert "snapshot-busy" in capsys.readouterr().err
    services.snapshots.mark(snapshot["id"], "failed", reason="stopped by the test")  # type: ignore[index]
    assert run_json(capsys, "snapshot", "rm", snapshot["id"]) == (0, {"deleted": snapshot["id"]})  # type: ignore[index]
    assert main(["snapshot", "show", snapshot["id"], "--json"]) == 4  # type: ignore[index]
