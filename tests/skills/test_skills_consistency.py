"""Skills and slash commands against the real CLI parser and the real OpenAPI document
(rules in tests/skills/checker.py), plus a negative self-test of the checker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control.app import create_app
from control.cli.main import build_parser
from control.settings import Settings
from tests.skills.checker import check_tree

SKILLS = Path(__file__).resolve().parents[2] / "skills"
EXPECTED_SKILLS = {
    "moorage-deploy",
    "moorage-env",
    "moorage-databases",
    "moorage-debug",
    "moorage-inference",
    "moorage-jobs",
    "moorage-domains",
    "moorage-onboarding",
    "moorage-previews",
    "moorage-snapshots",
    "moorage-sandbox",
}
EXPECTED_COMMANDS = {
    "deploy",
    "status",
    "logs",
    "env-set",
    "db-create",
    "rollback",
    "chat",
    "run",
    "domain-add",
    "preview",
    "sandbox-test",
}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("skills-data")))
    return app.openapi_schema.to_schema()


def test_every_skill_and_command_matches_the_cli_and_the_api(openapi: dict[str, Any]) -> None:
    report = check_tree(SKILLS, build_parser(), openapi)
    assert report.problems == []
    assert report.invocations >= 40 and report.endpoints >= 20  # the checker really looked


def test_the_expected_skills_and_commands_exist() -> None:
    assert {p.parent.name for p in SKILLS.glob("*/SKILL.md")} == EXPECTED_SKILLS
    assert {p.stem for p in (SKILLS / "commands").glob("*.md")} == EXPECTED_COMMANDS


def test_the_checker_catches_drift(tmp_path: Path, openapi: dict[str, Any]) -> None:
    (tmp_path / "commands").mkdir()
    bad = tmp_path / "bad-skill"
    bad.mkdir()
    (bad / "SKILL.md").write_text(
        "---\nname: other-name\ndescription: drifted\n---\n"
        "Run `moorage deploy . --app <app> --no-such-flag --json`, then `moorage apps create $APP --json`.\n"
        "```sh\nmoorage nosuchcommand --json\n```\n"
        "Calls `GET /v1/apps/{app}/nothing-here` and `DELETE /v1/whoami`, but `GET /v1/apps/{name}` exists.\n"
    )
    (tmp_path / "commands" / "broken.md").write_text("no front matter `moorage status`\n")
    (tmp_path / "commands" / "hint.md").write_text(
        "---\ndescription: env\nargument-hint: <app> NAME=VALUE [MORE ...]\n---\n`moorage env set $ARGUMENTS --json`\n"
    )
    problems = "\n".join(check_tree(tmp_path, build_parser(), openapi).problems)
    assert "must equal the folder name" in problems
    assert "--no-such-flag" in problems and "nosuchcommand" in problems
    assert "/v1/apps/{app}/nothing-here" in problems and "DELETE /v1/whoami" in problems
    assert "/v1/apps/{name}" not in problems and "apps create" not in problems and "env set" not in problems
    assert "broken.md: no well-formed YAML front matter" in problems
