"""``moorage register``, ``recover``, ``registration-tokens`` and ``tenants`` against a live server."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from control.cli.main import main
from tests.live_server import cli_tenant


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    if out.strip():
        return code, json.loads(out)
    # The CLI's error line; the live server in this process logs to stderr too, in between.
    return code, json.loads(next(line for line in reversed(err.splitlines()) if line.startswith('{"error"')))


def test_register_recover_and_the_operator_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_tenant(tmp_path / "data", monkeypatch) as live:
        operator = live.app.state.services.keys.bootstrap_operator("cli-op", another=True).token
        op = ["--api-key", operator, "--json"]
        code, token = run(capsys, "registration-tokens", "create", "--uses", "2", "--approval",
                          "--default-limits", '{"storage": {"max_volumes": 2}}', *op)  # fmt: skip
        assert (
            code == 0
            and token["token"].startswith("mrg_reg_")
            and token["default_limits"] == {"storage": {"max_volumes": 2, "max_total_mb": None, "max_snapshot_mb": None}}
        )

        key_file = tmp_path / "keys" / "solo.key"
        monkeypatch.setattr("sys.stdin", io.StringIO(token["token"] + "\n"))
        code, made = run(capsys, "register", "--token", "-", "--tenant", "solo", "--output-file", str(key_file), "--json")
        assert code == 0 and made["tenant"]["status"] == "pending" and made["written_to"] == str(key_file)
        assert key_file.read_text().strip() == made["key"]["token"]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        code, _ = run(capsys, "register", "--token", token["token"], "--tenant", "again", "--output-file", str(key_file))
        assert code == 3  # never over an existing key file, and nothing registered

        monkeypatch.setenv("MOORAGE_API_KEY_FILE", str(key_file))
        monkeypatch.delenv("MOORAGE_API_KEY")
        code, refused = run(capsys, "whoami", "--json")
        assert code == 7 and refused["error"] == "tenant-pending"
        code, pending = run(capsys, "tenants", "list", "--status", "pending", *op)
        assert [t["name"] for t in pending] == ["solo"]
        code, approved = run(capsys, "tenants", "approve", made["tenant"]["id"], *op)
        assert code == 0 and approved["status"] == "active"
        assert run(capsys, "whoami", "--json")[0] == 0

        code, recovered = run(capsys, "recover", "--tenant", "solo", "--code", made["recovery_code"], "--revoke-keys", "--json")
        assert code == 0 and recovered["revoked_keys"] == 1
        code, again = run(capsys, "recover", "--tenant", "solo", "--code", made["recovery_code"], "--json")
        assert code == 7 and again["error"] == "recovery-refused"
        code, fresh = run(capsys, "tenants", "recovery-code", made["tenant"]["id"], *op)
        assert code == 0 and fresh["recovery_code"].startswith("mrg_rec_")

        code, listed = run(capsys, "registration-tokens", "list", *op)
        assert [(t["id"], t["used"]) for t in listed] == [(token["id"], 1)]
        assert run(capsys, "registration-tokens", "revoke", token["id"], *op) == (0, {"revoked": token["id"]})
        code, shown = run(capsys, "registration-tokens", "get", token["id"], *op)
        assert shown["status"] == "revoked"
        code, bad = run(capsys, "registration-tokens", "create", "--default-limits", "{nope", *op)
        assert code == 2 and bad["error"] == "usage"
