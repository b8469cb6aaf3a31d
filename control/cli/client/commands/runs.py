"""``moorage run``, ``moorage runs ...`` and ``moorage cron ...``: one-off commands in a new
container from an app's current release, and the schedules that start them.

``moorage run APP [--timeout S] [--wait] -- COMMAND [ARG ...]``: everything after ``--`` is
the command, as it is (no shell). Without ``--wait`` it prints the queued run. With
``--wait`` it follows the run's output (to stdout, or to stderr with ``--json``), then
exits with the command's own exit code: ``124`` when it was killed at its timeout, ``1``
when it was cancelled or could not start. ``--json`` prints the run as one JSON document
on stdout, at the end.

JSON shapes are the API's objects: ``run`` and ``runs get``/``cancel`` a Run, ``runs list``
a list of them (newest first); ``cron create``/``get``/``enable``/``disable`` a Schedule,
``cron list`` a list of them, ``cron delete`` ``{"deleted": <name>, "app"}``. A run's output:
``moorage logs APP --run ID [--follow]``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from control.cli.client import exit_codes
from control.cli.client.commands.follow import poll, progress_stream
from control.cli.client.http import ApiClient
from control.cli.client.render import emit
from control.cli.client.terminal import terminal_safe

RUN_COLUMNS = ("id", "status", "exit_code", "trigger", "release", "created_at", "reason")
CRON_COLUMNS = ("name", "schedule", "enabled", "next_fire_at", "skipped", "command")
RUN_TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
TIMED_OUT_EXIT = 124  # as timeout(1) exits


class CommandAfterDashes(argparse.ArgumentParser):
    """A parser whose arguments end at the first ``--``: what follows is the command to run,
    options included, in ``run_argv`` (``command`` is the CLI's own subcommand)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        head, tail = (given[: given.index("--")], given[given.index("--") + 1 :]) if "--" in given else (given, [])
        parsed, extras = super().parse_known_args(head, namespace)
        parsed.run_argv = tail
        return parsed, extras


def _with_command(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.__class__ = CommandAfterDashes
    parser.epilog = "Everything after -- is the command and its arguments, run as they are (no shell)."
    return parser


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    run = _with_command(
        commands.add_parser(
            "run",
            parents=[common],
            help="run a command in a new container from an app's current release",
            usage="moorage run APP [--timeout S] [--wait] [--json] -- COMMAND [ARG ...]",
        )
    )
    run.add_argument("app", help="app name or id")
    run.add_argument("--timeout", type=int, metavar="S", help="kill it after S seconds (server default 600)")
    run.add_argument("--wait", action="store_true", help="follow its output; exit with its exit code")
    run.add_argument(
        "--volumes",
        choices=["read-only", "read-write", "none"],
        help="how it mounts the app's volumes (default read-only; read-write for an init or migration step)",
    )
    run.set_defaults(api=run_command)

    runs = commands.add_parser("runs", help="an app's one-off runs")
    sub = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    listed = sub.add_parser("list", parents=[common], help="list an app's runs, newest first")
    listed.add_argument("app", help="app name or id")
    listed.add_argument("--cron", metavar="NAME", help="only the runs this schedule started")
    listed.set_defaults(api=run_list)
    for action, handler, text in (("get", run_get, "show one run"), ("cancel", run_cancel, "cancel a run (kills it)")):
        one = sub.add_parser(action, parents=[common], help=text)
        one.add_argument("app", help="app name or id")
        one.add_argument("run", help="run id")
        one.set_defaults(api=handler)

    cron = commands.add_parser("cron", help="an app's cron schedules (each firing is a run)")
    csub = cron.add_subparsers(dest="cron_command", required=True, metavar="ACTION")
    create = _with_command(
        csub.add_parser(
            "create",
            parents=[common],
            help="create a schedule",
            usage="moorage cron create APP NAME --schedule EXPR [--timeout S] [--json] -- COMMAND [ARG ...]",
        )
    )
    create.add_argument("app", help="app name or id")
    create.add_argument("name", help="DNS label, unique per app")
    create.add_argument("--schedule", required=True, help="cron in UTC: 5 fields, or 6 with leading seconds ('*/10 * * * * *')")
    create.add_argument("--timeout", type=int, metavar="S", help="kill each run after S seconds")
    create.set_defaults(api=cron_create)
    listed = csub.add_parser("list", parents=[common], help="list an app's schedules")
    listed.add_argument("app", help="app name or id")
    listed.set_defaults(api=cron_list)
    for action, handler, text in (
        ("get", cron_get, "show one schedule (its last run, skips)"),
        ("enable", cron_enable, "switch a schedule on (its next firing counted from now)"),
        ("disable", cron_disable, "switch a schedule off"),
        ("delete", cron_delete, "delete a schedule (its runs stay)"),
    ):
        one = csub.add_parser(action, parents=[common], help=text)
        one.add_argument("app", help="app name or id")
        one.add_argument("name", help="schedule name")
        one.set_defaults(api=handler)


def _command(args: argparse.Namespace, usage: str) -> list[str] | None:
    if args.run_argv:
        return list(args.run_argv)
    print(json.dumps({"error": "usage", "detail": f"give the command after --: {usage}"}), file=sys.stderr)
    return None


# -- runs -----------------------------------------------------------------------------------
def run_command(args: argparse.Namespace, api: ApiClient) -> int:
    command = _command(args, "moorage run APP -- COMMAND [ARG ...]")
    if command is None:
        return exit_codes.USAGE
    body: dict[str, Any] = {"command": command}
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    if args.volumes:
        body["volume_access"] = args.volumes
    run = api.post(f"/v1/apps/{args.app}/runs", body)
    if not args.wait:
        emit(run, as_json=args.json)
        return exit_codes.OK
    run = follow_run(api, args.app, run["id"], progress_stream(args.json))
    if args.json:
        emit(run, as_json=True)
    else:
        summary = f"--> {run['status']}" + (f" (exit {run['exit_code']})" if run["exit_code"] is not None else "")
        print(terminal_safe(summary + (f": {run['reason']}" if run["reason"] else "")), file=sys.stderr)
    return exit_for_run(run)


def follow_run(api: ApiClient, app: str, run_id: str, out: TextIO) -> dict[str, Any]:
    """Print the run's output until it ends; return the run. If the stream breaks first,
    the run is polled instead (it goes on server-side regardless)."""
    path = f"/v1/apps/{app}/runs/{run_id}"
    try:
        with api.stream(f"{path}/logs", follow="true") as response:
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    if event == "status":
                        break
                    print(terminal_safe(line[5:].removeprefix(" ")), file=out, flush=True)
                elif not line:
                    event = "message"
    except Exception as exc:  # noqa: BLE001 - a broken stream is not a failed run: fall back to polling
        print(terminal_safe(f"moorage: output stream interrupted ({exc}); polling"), file=sys.stderr)
    # poll's status lines are dropped: the run's own output is what a waiting caller reads.
    return poll(lambda: api.get(path), RUN_TERMINAL, io.StringIO())


def exit_for_run(run: dict[str, Any]) -> int:
    """The command's own exit code; 124 past its timeout; 1 cancelled or never started."""
    if run["status"] == "timed_out":
        return TIMED_OUT_EXIT
    code = run.get("exit_code")
    if isinstance(code, int):
        return code
    return exit_codes.OK if run["status"] == "succeeded" else exit_codes.FAILED


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate(f"/v1/apps/{args.app}/runs", cron=args.cron), as_json=args.json, columns=RUN_COLUMNS)
    return exit_codes.OK


def run_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/runs/{args.run}"), as_json=args.json)
    return exit_codes.OK


def run_cancel(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.post(f"/v1/apps/{args.app}/runs/{args.run}/cancel"), as_json=args.json)
    return exit_codes.OK


# -- cron -----------------------------------------------------------------------------------
def cron_create(args: argparse.Namespace, api: ApiClient) -> int:
    command = _command(args, "moorage cron create APP NAME --schedule EXPR -- COMMAND [ARG ...]")
    if command is None:
        return exit_codes.USAGE
    body: dict[str, Any] = {"name": args.name, "schedule": args.schedule, "command": command}
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    emit(api.post(f"/v1/apps/{args.app}/cron", body), as_json=args.json)
    return exit_codes.OK


def cron_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate(f"/v1/apps/{args.app}/cron"), as_json=args.json, columns=CRON_COLUMNS)
    return exit_codes.OK


def cron_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/cron/{args.name}"), as_json=args.json)
    return exit_codes.OK


def cron_enable(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.patch(f"/v1/apps/{args.app}/cron/{args.name}", {"enabled": True}), as_json=args.json)
    return exit_codes.OK


def cron_disable(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.patch(f"/v1/apps/{args.app}/cron/{args.name}", {"enabled": False}), as_json=args.json)
    return exit_codes.OK


def cron_delete(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/apps/{args.app}/cron/{args.name}")
    emit({"deleted": args.name, "app": args.app}, as_json=args.json)
    return exit_codes.OK
