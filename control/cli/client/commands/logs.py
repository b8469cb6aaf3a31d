"""``moorage logs APP``: the running app's log, a deployment's build log, or a run's output.

Bounded: at most ``MAX_LINES`` lines are printed (the newest); the whole text is then
written to a file under the temp dir, named in the output, so an agent's context is not
flooded yet nothing is lost.

``--json``: ``{"app", "source": "runtime"|"build"|"run", "deployment": id|null, "run": id|null,
"lines": [...], "truncated": bool, "total_lines": n, "full_log": path|null}``. ``--follow --json`` prints
JSON Lines instead: ``{"line": "..."}`` per line and a last ``{"status": ...}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from control.cli.client.http import ApiClient
from control.cli.client.render import emit
from control.cli.client.terminal import terminal_safe

MAX_LINES = 200


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    logs = commands.add_parser("logs", parents=[common], help="an app's runtime log, or a deployment's build log")
    logs.add_argument("app", help="app name or id")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--deployment", metavar="ID", help="show this deployment's build log instead")
    which.add_argument("--run", metavar="ID", help="show this run's output instead (moorage runs list APP)")
    logs.add_argument("--tail", type=int, default=100, metavar="N", help="runtime log lines to start with (100)")
    logs.add_argument("--follow", action="store_true", help="stream until the log ends (Ctrl-C to stop)")
    logs.set_defaults(api=run_logs)


def _path(args: argparse.Namespace) -> str:
    if args.deployment:
        return f"/v1/apps/{args.app}/deployments/{args.deployment}/logs"
    if args.run:
        return f"/v1/apps/{args.app}/runs/{args.run}/logs"
    return f"/v1/apps/{args.app}/logs"


def _source(args: argparse.Namespace) -> str:
    return "build" if args.deployment else "run" if args.run else "runtime"


def bounded(text: str, label: str) -> tuple[list[str], bool, str | None]:
    """The newest MAX_LINES lines; the full text goes to a file when cut."""
    lines = text.splitlines()
    if len(lines) <= MAX_LINES:
        return lines, False, None
    with tempfile.NamedTemporaryFile("w", prefix=f"moorage-{label}-", suffix=".log", delete=False) as f:
        f.write(text)
    return lines[-MAX_LINES:], True, f.name


def run_logs(args: argparse.Namespace, api: ApiClient) -> int:
    tail = None if args.deployment or args.run else args.tail
    if args.follow:
        return _follow(args, api, tail)
    text = api.get(_path(args), tail=tail) or ""
    lines, truncated, full = bounded(text, args.app)
    if args.json:
        emit(
            {
                "app": args.app,
                "source": _source(args),
                "deployment": args.deployment,
                "run": args.run,
                "lines": lines,
                "truncated": truncated,
                "total_lines": len(text.splitlines()),
                "full_log": full,
            },
            as_json=True,
        )
        return 0
    if truncated:
        print(f"... {len(text.splitlines()) - len(lines)} earlier lines cut; full log: {full}")
    print("\n".join(terminal_safe(line) for line in lines))
    return 0


def _follow(args: argparse.Namespace, api: ApiClient, tail: int | None) -> int:
    def out(item: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(item), flush=True)
        elif "line" in item:
            print(terminal_safe(item["line"]), flush=True)
        else:
            print(terminal_safe(f"--> {item['status']}"), flush=True)

    with api.stream(_path(args), follow="true", tail=tail) as response:
        event = "message"
        for raw in response.iter_lines():
            if raw.startswith("event:"):
                event = raw.partition(":")[2].strip()
            elif raw.startswith("data:"):
                data = raw[5:].removeprefix(" ")
                if event == "status":
                    out(json.loads(data))
                    return 0
                out({"line": data})
            elif not raw:
                event = "message"
    return 0
