"""The API half of the CLI against a real server: JSON shapes, exit codes, retries."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.cli.client import exit_codes
from control.cli.main import main
from control.security.principal import Principal
from control.settings import Settings
from tests.live_server import free_port, serving


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, object]]:
    with serving(Settings(data_dir=tmp_path / "data", port=free_port())) as running:
        yield running


@pytest.fixture
def tenant_env(server, monkeypatch: pytest.MonkeyPatch) -> str:
    url, app = server
    services = app.state.services
    tenant = services.tenants.create("cli")
    operator = services.keys.bootstrap_operator("cli-op").key
    issuer = Principal.of(operator.id, None, operator.scopes)
    issued = services.keys.issue(issuer, tenant.id, name="cli", scopes=["admin"], expires_at=None)
    monkeypatch.setenv("MOORAGE_URL", url)
    monkeypatch.setenv("MOORAGE_API_KEY", issued.token)
    monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
    return issued.token


def run(capsys, *argv: str) -> tuple[int, object, list[str]]:
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if captured.out.strip() and "--json" in argv else captured.out
    return code, out, captured.err.splitlines()


def test_apps_lifecycle_with_json(tenant_env, capsys) -> None:
    code, created, _ = run(capsys, "apps", "create", "web", "--port", "9000", "--json")
    assert code == 0 and created["name"] == "web" and created["port"] == 9000
    code, listed, _ = run(capsys, "apps", "list", "--json")
    assert [a["id"] for a in listed] == [created["id"]]
    code, updated, _ = run(capsys, "apps", "update", "web", "--health-path", "/up", "--json")
    assert updated["health_check_path"] == "/up"
    code, table, _ = run(capsys, "apps", "list")
    assert table.splitlines()[0].split()[:2] == ["NAME", "ID"] and "web" in table
    assert run(capsys, "apps", "delete", "web", "--json")[:2] == (0, {"deleted": "web"})


def test_env_set_list_reveal_unset(tenant_env, capsys) -> None:
    run(capsys, "apps", "create", "api", "--json")
    code, env, _ = run(capsys, "env", "set", "api", "TOKEN=s3cr3t-value", "MODE=prod", "--json")
    assert code == 0 and {v["name"] for v in env["vars"]} == {"TOKEN", "MODE"}
    assert "s3cr3t-value" not in json.dumps(env)
    code, listing, _ = run(capsys, "env", "list", "api")
    assert "TOKEN" in listing and "s3cr3t-value" not in listing
    code, revealed, _ = run(capsys, "env", "list", "api", "--reveal", "--json")
    assert {v["name"]: v["value"] for v in revealed["vars"]}["TOKEN"] == "s3cr3t-value"
    code, env, _ = run(capsys, "env", "unset", "api", "MODE", "--json")
    assert [v["name"] for v in env["vars"]] == ["TOKEN"]


@pytest.mark.parametrize(
    ("argv", "expected", "code"),
    [
        (("apps", "get", "missing"), exit_codes.NOT_FOUND, "not-found"),
        (("apps", "create", "Bad_Name"), exit_codes.INVALID, "validation-failed"),
    ],
)
def test_errors_map_to_exit_codes(tenant_env, capsys, argv, expected, code) -> None:
    status, _, err = run(capsys, *argv, "--json")
    assert status == expected
    problem = json.loads(err[-1])
    assert problem["error"] == code and problem["request_id"].startswith("req_")


def test_conflict_and_auth_exit_codes(tenant_env, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    run(capsys, "apps", "create", "dup", "--json")
    assert run(capsys, "apps", "create", "dup", "--json")[0] == exit_codes.CONFLICT
    monkeypatch.setenv("MOORAGE_API_KEY", "mrg_live_not-a-key")
    assert run(capsys, "whoami", "--json")[0] == exit_codes.AUTH


def test_unreachable_server_is_reported_after_the_retry_budget(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
    status, _, err = run(capsys, "whoami", "--url", f"http://127.0.0.1:{free_port()}", "--retry-for", "1", "--json")
    assert status == exit_codes.UNAVAILABLE
    assert any("retrying" in line for line in err)
    assert json.loads(err[-1])["error"] == "unavailable"


def test_profile_file_supplies_url_and_key_file(tenant_env, tmp_path: Path, capsys, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(tenant_env + "\n")
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'[staging]\nurl = "{os.environ["MOORAGE_URL"]}"\napi_key_file = "{key_file}"\n')
    monkeypatch.setenv("MOORAGE_CONFIG", str(profiles))
    monkeypatch.delenv("MOORAGE_URL")
    monkeypatch.delenv("MOORAGE_API_KEY")
    code, me, _ = run(capsys, "whoami", "--profile", "staging", "--json")
    assert code == 0 and me["scopes"] == ["admin", "deploy", "read"]
    assert run(capsys, "whoami", "--profile", "nope", "--json")[0] == exit_codes.USAGE
