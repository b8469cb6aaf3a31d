"""Checks that skills and slash commands cannot drift from the code.

What is checked, per file:
- YAML front matter between ``---`` lines at the top; skills need ``name`` (equal to the
  folder's name) and a non-empty ``description``; commands need a non-empty ``description``
  (``argument-hint`` and ``allowed-tools`` optional, strings).
- Every ``moorage ...`` invocation (an inline code span, or a line of a fenced block that
  starts with ``moorage``) parses with the real argparse parser.
- Every ``METHOD /v1/...`` endpoint exists, with that method, in the app's OpenAPI document.

Placeholder substitution rule (before parsing an invocation):
1. ``$ARGUMENTS`` becomes the command's ``argument-hint`` with ``[optional ...]`` parts
   dropped (so it stands for the minimal arguments the command documents);
2. ``<anything>``, ``$1``..``$9`` and ``$NAME`` become ``sample``;
3. then ``shlex.split``; the leading ``moorage`` is dropped.
Endpoints: the query string is dropped and every ``{param}`` compares as ``{}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAMPLE = "sample"
CODE_SPAN = re.compile(r"`([^`\n]+)`")
ENDPOINT = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE)\s+(/v1/[^\s`),;]*)")
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>|\$\{?[A-Za-z0-9_]+\}?")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    invocations: int = 0
    endpoints: int = 0


def front_matter(text: str) -> tuple[dict[str, Any] | None, str]:
    if not text.startswith("---\n"):
        return None, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return None, text
    try:
        data = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None, text
    return (data if isinstance(data, dict) else None), text[end + 5 :]


def invocations(body: str) -> list[str]:
    found = [m.group(1).strip() for m in CODE_SPAN.finditer(body)]
    in_fence = False
    for line in body.splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        elif in_fence:
            found.append(line.strip())
    return [c for c in found if c.startswith("moorage ")]


def substitute(command: str, argument_hint: str | None) -> str:
    if argument_hint is not None:
        minimal = re.sub(r"\[[^\]]*\]", "", argument_hint).strip()
        command = command.replace("$ARGUMENTS", minimal)
    return PLACEHOLDER.sub(SAMPLE, command)


def normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.split("?")[0].rstrip("/") or "/")


def api_routes(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), normalise(path)) for path, item in openapi["paths"].items() for method in item}


def parses(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None if argparse accepts ``argv``, else its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def check_file(path: Path, kind: str, parser: argparse.ArgumentParser, routes: set[tuple[str, str]], report: Report) -> None:
    meta, body = front_matter(path.read_text())
    if meta is None:
        report.problems.append(f"{path}: no well-formed YAML front matter")
        return
    if not isinstance(meta.get("description"), str) or not meta["description"].strip():
        report.problems.append(f"{path}: front matter needs a non-empty description")
    if kind == "skill" and meta.get("name") != path.parent.name:
        report.problems.append(f"{path}: name {meta.get('name')!r} must equal the folder name {path.parent.name!r}")
    for key in ("argument-hint", "allowed-tools"):
        if key in meta and not isinstance(meta[key], str):
            report.problems.append(f"{path}: {key} must be a string")
    hint = meta.get("argument-hint") if kind == "command" else None
    for command in invocations(body):
        report.invocations += 1
        argv = shlex.split(substitute(command, hint))[1:]
        error = parses(parser, argv)
        if error:
            report.problems.append(f"{path}: `{command}` does not parse: {error}")
    for method, endpoint in ENDPOINT.findall(body):
        report.endpoints += 1
        if (method, normalise(endpoint)) not in routes:
            report.problems.append(f"{path}: {method} {endpoint} is not in the OpenAPI document")


def check_tree(root: Path, parser: argparse.ArgumentParser, openapi: dict[str, Any]) -> Report:
    report, routes = Report(), api_routes(openapi)
    for skill in sorted(root.glob("*/SKILL.md")):
        if skill.parent.name != "commands":
            check_file(skill, "skill", parser, routes, report)
    for command in sorted((root / "commands").glob("*.md")):
        check_file(command, "command", parser, routes, report)
    return report
