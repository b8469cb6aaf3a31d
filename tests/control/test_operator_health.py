"""``GET /v1/operator/health`` against the real things: the shared Docker engine with runsc,
a Traefik of this test's own, a data directory on a small loop-mounted ext4 filled up, a
Docker socket where nothing listens, and a Traefik stopped. Each case names the failing
component and its figure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.settings import Settings
from runtime.traefik import TraefikProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def traefik() -> Iterator[TraefikProcess]:
    proc = TraefikProcess().start()
    try:
        yield proc
    finally:
        proc.stop()


def health_settings(tmp_path: Path, migrated_database: Path, traefik: TraefikProcess, **changes: Any) -> Settings:
    db_dir = tmp_path / "db"
    db_dir.mkdir(exist_ok=True)
    shutil.copyfile(migrated_database, db_dir / "moorage.db")
    data_dir = changes.pop("data_dir", tmp_path / "data")
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite:///{db_dir / 'moorage.db'}",
        "base_domain": "apps.test",
        "traefik_url": traefik.url,
        "traefik_ping_address": traefik.opts.ping_address,
        "traefik_dynamic_dir": traefik.dynamic_dir,
        "api_route": False,
        "job_workers": 0,
    }
    return Settings(**{**fields, **changes})


def health(settings: Settings) -> tuple[int, dict[str, Any]]:
    app: Litestar = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        token = app.state.services.keys.bootstrap_operator("health-test").token
        assert client.get("/v1/operator/health").status_code == 401
        response = client.get("/v1/operator/health", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


def test_all_ok(tmp_path: Path, migrated_database: Path, traefik: TraefikProcess) -> None:
    settings = health_settings(tmp_path, migrated_database, traefik)
    status, body = health(settings)
    assert status == 200, body
    c = body["components"]
    assert body["status"] == "ok" and body["failing"] == [], body
    assert set(c) == {
        "data_disk",
        "docker_disk",
        "docker",
        "sandbox_smoke",
        "traefik_entrypoints",
        "traefik_ping",
        "job_queue",
        "reconciler",
        "inference_nodes",
        "environment_pool",
        "breakers",
    }
    assert str(settings.data_dir) in c["data_disk"]["figure"] and c["data_disk"]["value"] > 15
    assert "/var/lib/docker" in c["docker_disk"]["figure"] or "free of" in c["docker_disk"]["figure"]
    assert c["docker"]["figure"].startswith("Docker ") and c["docker"]["value"] < 5
    assert "under runsc ran `true`" in c["sandbox_smoke"]["figure"] and 0 < c["sandbox_smoke"]["value"] < 30
    assert traefik.url in c["traefik_entrypoints"]["figure"] and traefik.opts.ping_address in c["traefik_ping"]["figure"]
    assert c["job_queue"]["figure"].startswith("0 queued, 0 running")
    assert all(v["remedy"] == "" for v in c.values())
    print({name: v["figure"] for name, v in c.items()})


def test_a_nearly_full_data_disk_fails_naming_the_figure(
    tmp_path: Path, migrated_database: Path, traefik: TraefikProcess
) -> None:
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.fail("needs root and mkfs.ext4 (e2fsprogs) to loop-mount a small filesystem")
    image, mount = tmp_path / "data.img", tmp_path / "data"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "20M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        # Filled to the last block, as a runaway log would (root's reserved blocks included).
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k"], capture_output=True)
        settings = health_settings(tmp_path, migrated_database, traefik, data_dir=mount)
        status, body = health(settings)
        assert status == 200
        disk = body["components"]["data_disk"]
        assert body["status"] == "fail" and body["failing"][0] == "data_disk", body
        assert disk["status"] == "fail" and disk["value"] < 5 and str(mount) in disk["figure"], disk
        assert "MiB free of" in disk["figure"] and "free space" in disk["remedy"]
        print(disk["figure"])
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_an_unreachable_docker_fails_docker_and_the_smoke_run(
    tmp_path: Path, migrated_database: Path, traefik: TraefikProcess
) -> None:
    nowhere = tmp_path / "none.sock"
    nowhere.touch()  # a socket path that exists, where nothing listens
    settings = health_settings(tmp_path, migrated_database, traefik, docker_url=f"unix://{nowhere}")
    status, body = health(settings)
    c = body["components"]
    assert status == 200 and body["status"] == "fail"
    assert {"docker", "sandbox_smoke"} <= set(body["failing"]), body["failing"]
    assert c["docker"]["status"] == "fail" and f"unix://{nowhere}" in c["docker"]["figure"], c["docker"]
    assert "start dockerd" in c["docker"]["remedy"]
    assert c["sandbox_smoke"]["status"] == "fail" and "not run" in c["sandbox_smoke"]["figure"]
    assert c["docker_disk"]["status"] == "warn" and c["traefik_ping"]["status"] == "ok"
    print(c["docker"]["figure"])


def test_traefik_down_fails_its_entrypoints_and_ping(tmp_path: Path, migrated_database: Path) -> None:
    proc = TraefikProcess().start()
    settings = health_settings(tmp_path, migrated_database, proc)
    proc.stop()
    status, body = health(settings)
    c = body["components"]
    assert status == 200 and body["status"] == "fail"
    assert {"traefik_entrypoints", "traefik_ping"} <= set(body["failing"]), body["failing"]
    assert f"127.0.0.1:{proc.http_port}" in c["traefik_entrypoints"]["figure"] and c["traefik_entrypoints"]["value"] == 1
    assert proc.opts.ping_address in c["traefik_ping"]["figure"] and "start Traefik" in c["traefik_ping"]["remedy"]
    assert c["docker"]["status"] == "ok"
    print(c["traefik_entrypoints"]["figure"], "|", c["traefik_ping"]["figure"])


def test_the_smoke_run_is_cached(tmp_path: Path, migrated_database: Path, traefik: TraefikProcess) -> None:
    app: Litestar = create_app(health_settings(tmp_path, migrated_database, traefik, health_smoke_cache_s=300))
    with TestClient(app, raise_server_exceptions=False):
        checker = app.state.services.operator_health
        first = next(c for c in checker.check().components if c.name == "sandbox_smoke")
        again = next(c for c in checker.check().components if c.name == "sandbox_smoke")
    assert first.status == again.status == "ok" and first.value == again.value
    assert again.figure.startswith(first.figure) and again.figure.endswith(" s ago)")


def test_moorage_admin_health_prints_the_json_and_exits_6_on_a_failure(
    tmp_path: Path, migrated_database: Path, traefik: TraefikProcess, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from control.cli.main import main
    from tests.live_server import free_port, serving

    dead = f"127.0.0.1:{free_port()}"  # Traefik's ping where nothing listens
    settings = health_settings(tmp_path, migrated_database, traefik, traefik_ping_address=dead, port=free_port())
    with serving(settings) as (url, app):
        token = app.state.services.keys.bootstrap_operator("cli").token
        monkeypatch.setenv("MOORAGE_URL", url)
        monkeypatch.setenv("MOORAGE_API_KEY", token)
        monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
        code = main(["admin", "health", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 6 and report["failing"] == ["traefik_ping"] and dead in report["components"]["traefik_ping"]["figure"]
