"""``moorage`` entry point. Every command prints JSON on stdout; errors go to stderr
as JSON with a non-zero exit code (2 usage, 3 conflict, 1 anything else)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from control.cli import admin, server
from inference import cli as inference_cli

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFLICT = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moorage", description="moorage: an agent-operated PaaS control plane")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.register(commands)
    admin.register(commands)
    inference_cli.register(commands)
    return parser


def emit(payload: dict[str, Any], stream: Any = None) -> None:
    # One line: agents read the last line of stderr as the error.
    print(json.dumps(payload, default=str), file=stream or sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or EXIT_OK)
    except admin.CommandError as exc:
        emit({"error": exc.code, "detail": str(exc)}, sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
