"""The README's promise: one command runs the control plane, one passes the tests, and CI
runs exactly that test command (tests/e2e/test_fresh_clone.py runs the other)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def commands(block: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_readme_names_two_commands_and_ci_runs_its_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Two commands section has no sh block"
    run, test = commands(block.group(1))
    assert (run, test) == ("./deploy/dev.sh run", "./deploy/dev.sh test")
    ci = [line for line in commands((REPO / ".ci" / "run").read_text()) if not line.startswith(("set ", "cd ", "apt-get"))]
    # First the README's main command and tour on the bare machine (.ci/first-run-tour runs
    # `./deploy/dev.sh run`), then exactly the README's test command.
    assert ci == ["bash .ci/first-run-tour", test], f".ci/run should run the first-run tour, then {test}; runs {ci}"
    assert "./deploy/dev.sh run" in (REPO / ".ci" / "first-run-tour").read_text()
    dev = (REPO / "deploy" / "dev.sh").read_text()
    for command in (run, test):
        assert f"\n  {shlex.split(command)[1]}) shift;" in dev, f"deploy/dev.sh has no `{command}`"
