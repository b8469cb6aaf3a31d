"""Dependencies point inward, checked on the source: every import statement (also inside
functions and ``TYPE_CHECKING`` blocks) of each package against the packages it must not
reach."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> packages it must never import
RULES = {
    "runtime": ("control", "inference"),  # adapters to the real world know nothing of tenants
    "control/domain": ("control.api", "control.jobs", "control.reconcile", "control.cli", "control.app", "control.bootstrap"),
    "control/store": ("control.api", "control.jobs", "control.reconcile", "control.cli", "control.app", "control.bootstrap"),
    "control/api": ("control.store", "control.bootstrap", "control.cli"),
    "control/security": ("control.api", "control.jobs", "control.store", "control.cli"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_layer_imports_nothing_it_must_not(package: str) -> None:
    assert violations(package, RULES[package]) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from control.store.database import Store\n    import control.jobs.queue\n")
    assert [name for _, name in imported_modules(module)] == ["control.store.database", "control.jobs.queue"]
