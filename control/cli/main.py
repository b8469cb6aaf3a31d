"""``moorage`` entry point: server commands (serve, migrate, admin, model, node) and the
API client commands (whoami, apps, env, ...). Results go to stdout; an error is one JSON
line on stderr and a documented exit code (control/cli/client/exit_codes.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from control.cli import admin, server
from control.cli.client import commands as client_commands
from control.cli.client import config as client_config
from control.cli.client import exit_codes
from control.cli.client.http import ApiClient, ApiError
from inference import cli as inference_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moorage", description="moorage: an agent-operated PaaS control plane")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.register(commands)
    admin.register(commands)
    inference_cli.register(commands)
    client_commands.register(commands)
    return parser


def emit(payload: dict[str, Any], stream: Any = None) -> None:
    # One line: agents read the last line of stderr as the error.
    print(json.dumps(payload, default=str), file=stream or sys.stdout)


def _run_api_command(args: argparse.Namespace) -> int:
    try:
        config = client_config.resolve(args.url, args.api_key, args.profile)
    except client_config.ConfigError as exc:
        emit({"error": "config", "detail": str(exc)}, sys.stderr)
        return exit_codes.USAGE
    api = ApiClient(config, retry_for_s=args.retry_for)
    try:
        return int(args.api(args, api) or exit_codes.OK)
    except ApiError as exc:
        problem = exc.problem
        emit(
            {
                "error": problem.get("code", "unavailable" if not exc.status else "error"),
                "status": exc.status or None,
                "detail": str(exc),
                "request_id": problem.get("request_id"),
                **({"errors": problem["errors"]} if problem.get("errors") else {}),
            },
            sys.stderr,
        )
        return exc.exit_code
    finally:
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "api"):
        return _run_api_command(args)
    try:
        return int(args.run(args) or exit_codes.OK)
    except admin.CommandError as exc:
        emit({"error": exc.code, "detail": str(exc)}, sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
