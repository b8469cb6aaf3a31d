"""``moorage skills install``: copies skills and slash commands, idempotently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli.main import main


def test_skills_install_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["skills", "install", "--project", str(tmp_path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["created"] and any(p.startswith("commands/") for p in first["created"])
    assert (tmp_path / ".claude" / "skills" / "moorage-deploy" / "SKILL.md").exists()
    assert main(["skills", "install", "--project", str(tmp_path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["created"] == again["updated"] == [] and again["unchanged"] == len(first["created"])
