"""``moorage skills install [--project DIR]``: copy the Claude Code skills and slash
commands into ``DIR/.claude/skills/<name>/`` and ``DIR/.claude/commands/``.

The source is the repository's ``skills/`` folder, found next to the ``control`` package
(an editable or source install); ``--source`` or ``MOORAGE_SKILLS_DIR`` point elsewhere.
Idempotent: unchanged files are left alone. ``--json``: ``{"source", "target",
"created": [...], "updated": [...], "unchanged": n}`` (paths relative to the target).
Needs no server and no key."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TypedDict

import control
from control.cli.client.render import emit


def default_source() -> Path:
    return Path(os.environ.get("MOORAGE_SKILLS_DIR") or Path(control.__file__).resolve().parents[1] / "skills")


def plan(source: Path) -> dict[Path, Path]:
    """Source file → path under ``.claude``: every skill folder and every command file."""
    files: dict[Path, Path] = {}
    for skill in sorted(p.parent for p in source.glob("*/SKILL.md")):
        for f in sorted(skill.rglob("*")):
            if f.is_file():
                files[f] = Path("skills") / skill.name / f.relative_to(skill)
    for f in sorted((source / "commands").glob("*.md")):
        files[f] = Path("commands") / f.name
    return files


class InstallReport(TypedDict):
    source: str
    target: str
    created: list[str]  # paths relative to the target
    updated: list[str]
    unchanged: int


def install(source: Path, project: Path) -> InstallReport:
    target = project / ".claude"
    created: list[str] = []
    updated: list[str] = []
    unchanged = 0
    for src, rel in plan(source).items():
        dest = target / rel
        data = src.read_bytes()
        if dest.exists() and dest.read_bytes() == data:
            unchanged += 1
            continue
        (updated if dest.exists() else created).append(str(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return {"source": str(source), "target": str(target), "created": created, "updated": updated, "unchanged": unchanged}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    skills = commands.add_parser("skills", help="Claude Code skills and slash commands for moorage")
    sub = skills.add_subparsers(dest="skills_command", required=True, metavar="ACTION")
    inst = sub.add_parser("install", help="copy them into PROJECT/.claude/ (idempotent)")
    inst.add_argument("--project", default=".", metavar="DIR", help="project root (default: .)")
    inst.add_argument("--source", metavar="DIR", help="skills folder (default: the repository's skills/)")
    inst.add_argument("--json", action="store_true", help="print what changed as JSON")
    inst.set_defaults(run=run_install)


def run_install(args: argparse.Namespace) -> int:
    source = Path(args.source) if args.source else default_source()
    if not (source / "commands").is_dir():
        raise SystemExit(f"moorage skills install: no skills at {source}; pass --source DIR or set MOORAGE_SKILLS_DIR")
    report = install(source, Path(args.project).resolve())
    if args.json:
        emit(report, as_json=True)
    else:
        print(
            f"{len(report['created'])} created, {len(report['updated'])} updated, {report['unchanged']} unchanged in {report['target']}"
        )
        for path in [*report["created"], *report["updated"]]:
            print(f"  {path}")
    return 0
