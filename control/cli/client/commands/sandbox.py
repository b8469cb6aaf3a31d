"""``moorage sandbox ...``: environments, leased sandbox containers to run commands in.

``create`` starts one (``--image`` a platform image, or ``--from-app APP`` its current
release, ``--with-app-env`` with that app's env vars and links) and prints it; ``exec ENV --
COMMAND [ARG ...]`` runs a command (no shell), prints its stdout to stdout and its stderr to
stderr, and exits with the command's exit code (``124`` when it was killed at its timeout,
``1`` when it was cut off: its environment deleted or its lease over). ``push ENV DIR``
uploads a local directory's contents (``--path``, default /workspace); ``pull ENV PATH DEST``
downloads a file or directory and unpacks it under DEST, hardened as uploads are.

JSON shapes are the API's: ``create``/``show``/``renew`` an Environment, ``list`` a list of
them, ``exec`` the exec result, ``push`` ``{"path", "bytes"}``, ``pull`` ``{"path", "dest",
"bytes"}``, ``rm`` ``{"deleted": <id>}``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from control.cli.client import exit_codes
from control.cli.client.commands.deploy import pack
from control.cli.client.commands.runs import TIMED_OUT_EXIT, _command, _with_command
from control.cli.client.http import ApiClient
from control.cli.client.render import emit
from control.cli.client.terminal import terminal_safe
from runtime.archive import ArchiveRejected, extract_tar_gz

COLUMNS = ("id", "status", "image", "cpu", "memory_mb", "lease_expires_at")
WORKSPACE = "/workspace"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    sandbox = commands.add_parser("sandbox", help="environments: leased sandbox containers to run commands in")
    sub = sandbox.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="start an environment (ready to exec when this returns)")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--image", help="a platform image (default moorage/python:3-bookworm)")
    source.add_argument("--from-app", metavar="APP", help="start from this app's current release")
    create.add_argument("--with-app-env", action="store_true", help="with --from-app: that app's env vars and links")
    create.add_argument("--lease", type=int, metavar="S", help="seconds until it is removed (server default 900)")
    create.add_argument("--cpu", type=float, help="CPUs (server default 1.0)")
    create.add_argument("--memory-mb", type=int, help="memory in MiB (server default 1024)")
    create.set_defaults(api=create_environment)

    listed = sub.add_parser("list", parents=[common], help="list environments")
    listed.set_defaults(api=list_environments)
    for action, handler, text in (("show", show_environment, "show one (its lease)"), ("rm", remove_environment, "delete one")):
        one = sub.add_parser(action, parents=[common], help=text)
        one.add_argument("env", help="environment id")
        one.set_defaults(api=handler)

    renew = sub.add_parser("renew", parents=[common], help="extend the lease from now (up to its lifetime)")
    renew.add_argument("env", help="environment id")
    renew.add_argument("--lease", type=int, metavar="S", help="seconds from now (server default 900)")
    renew.set_defaults(api=renew_environment)

    run = _with_command(
        sub.add_parser(
            "exec",
            parents=[common],
            help="run a command in an environment; exit with its exit code",
            usage="moorage sandbox exec ENV [--timeout S] [--workdir DIR] [--env K=V] [--stdin-file F] [--json] -- COMMAND [ARG ...]",
        )
    )
    run.add_argument("env", help="environment id")
    run.add_argument("--timeout", type=int, metavar="S", help="kill it after S seconds (server default 300)")
    run.add_argument("--workdir", metavar="DIR", help="absolute working directory (default /workspace)")
    run.add_argument(
        "--env", dest="vars", action="append", default=[], metavar="K=V", help="an env var for this command (repeatable)"
    )
    run.add_argument("--stdin-file", metavar="F", help="send this file's text as stdin ('-': this process's stdin)")
    run.set_defaults(api=exec_command)

    push = sub.add_parser("push", parents=[common], help="upload a local directory's contents into an environment")
    push.add_argument("env", help="environment id")
    push.add_argument("dir", help="local directory (.git, .venv and caches are skipped)")
    push.add_argument("--path", default=WORKSPACE, help="where to unpack it (default /workspace)")
    push.set_defaults(api=push_files)

    pull = sub.add_parser("pull", parents=[common], help="download a file or directory of an environment")
    pull.add_argument("env", help="environment id")
    pull.add_argument("path", help="absolute path in the environment")
    pull.add_argument("dest", help="local directory to unpack it under (made if missing)")
    pull.set_defaults(api=pull_files)


def create_environment(args: argparse.Namespace, api: ApiClient) -> int:
    body: dict[str, Any] = {"from_app": args.from_app} if args.from_app else {"image": args.image or "moorage/python:3-bookworm"}
    if args.with_app_env:
        body["with_app_env"] = True
    for field, value in (("lease_s", args.lease), ("cpu", args.cpu), ("memory_mb", args.memory_mb)):
        if value is not None:
            body[field] = value
    emit(api.post("/v1/environments", body), as_json=args.json)
    return exit_codes.OK


def list_environments(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate("/v1/environments"), as_json=args.json, columns=COLUMNS)
    return exit_codes.OK


def show_environment(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/environments/{args.env}"), as_json=args.json)
    return exit_codes.OK


def remove_environment(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/environments/{args.env}")
    emit({"deleted": args.env}, as_json=args.json)
    return exit_codes.OK


def renew_environment(args: argparse.Namespace, api: ApiClient) -> int:
    body = {} if args.lease is None else {"lease_s": args.lease}
    emit(api.post(f"/v1/environments/{args.env}/renew", body), as_json=args.json)
    return exit_codes.OK


def exec_command(args: argparse.Namespace, api: ApiClient) -> int:
    command = _command(args, "moorage sandbox exec ENV -- COMMAND [ARG ...]")
    if command is None:
        return exit_codes.USAGE
    body: dict[str, Any] = {"command": command}
    env = {}
    for pair in args.vars:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            print(f'{{"error": "usage", "detail": "--env takes K=V; got {terminal_safe(pair)!r}"}}', file=sys.stderr)
            return exit_codes.USAGE
        env[name] = value
    if env:
        body["env"] = env
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    if args.workdir:
        body["workdir"] = args.workdir
    if args.stdin_file:
        body["stdin"] = sys.stdin.read() if args.stdin_file == "-" else Path(args.stdin_file).read_text()
    result = api.post(f"/v1/environments/{args.env}/exec", body)
    if args.json:
        emit(result, as_json=True)
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
        if result["reason"]:
            print(terminal_safe(f"--> {result['reason']}"), file=sys.stderr)
    return exit_for_exec(result)


def exit_for_exec(result: dict[str, Any]) -> int:
    if result["timed_out"]:
        return TIMED_OUT_EXIT
    code = result["exit_code"]
    return exit_codes.FAILED if code is None else int(code)


def push_files(args: argparse.Namespace, api: ApiClient) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        print(f'{{"error": "usage", "detail": "not a directory: {terminal_safe(str(directory))!r}"}}', file=sys.stderr)
        return exit_codes.USAGE
    result = api.request(
        "PUT",
        f"/v1/environments/{args.env}/files",
        params={"path": args.path},
        content=pack(directory),
        headers={"Content-Type": "application/gzip"},
    )
    emit(result, as_json=args.json)
    return exit_codes.OK


def pull_files(args: argparse.Namespace, api: ApiClient) -> int:
    with api.stream(f"/v1/environments/{args.env}/files", path=args.path) as response:
        body = response.read()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".moorage-pull-", dir=dest))
    try:
        archive = scratch / "files.tar.gz"
        archive.write_bytes(body)
        try:
            extract_tar_gz(archive, scratch / "tree")
        except ArchiveRejected as exc:
            print(f'{{"error": "archive-rejected", "detail": {str(exc)!r}}}', file=sys.stderr)
            return exit_codes.FAILED
        shutil.copytree(scratch / "tree", dest, dirs_exist_ok=True, symlinks=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    emit({"path": args.path, "dest": str(dest), "bytes": len(body)}, as_json=args.json)
    return exit_codes.OK
