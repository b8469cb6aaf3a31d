"""``moorage admin ...``: operator commands that work on the database directly."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from control.domain.errors import Conflict
from control.settings import Settings


class CommandError(Exception):
    def __init__(self, message: str, *, code: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = commands.add_parser("admin", help="operator commands run on the server host")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    bootstrap = sub.add_parser("bootstrap", help="create the first operator key and print it once")
    bootstrap.add_argument("--name", default="bootstrap", help="a label for the key")
    bootstrap.add_argument("--output-file", type=Path, help="also write the key to this file (mode 0600)")
    bootstrap.add_argument("--another", action="store_true", help="mint one more operator key")
    bootstrap.set_defaults(run=run_bootstrap)


def _write_secret_file(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(f"{path} exists; refusing to overwrite a key file.", code="file-exists", exit_code=3) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def run_bootstrap(args: argparse.Namespace) -> int:
    from control.logging import configure_logging
    from control.services import Services
    from control.store import migrate

    settings = Settings.from_env()
    configure_logging("warning", settings.log_format)  # stdout carries the result
    services = Services.build(settings)
    try:
        migrate.upgrade(services.db.engine)
        if args.output_file is not None and args.output_file.exists():
            raise CommandError(
                f"{args.output_file} exists; refusing to overwrite a key file.", code="file-exists", exit_code=3
            )
        try:
            issued = services.keys.bootstrap_operator(args.name, another=args.another)
        except Conflict as exc:
            raise CommandError(exc.detail, code=exc.code, exit_code=3) from None
        if args.output_file is not None:
            _write_secret_file(args.output_file, issued.token)
        print(json.dumps({
            "key_id": issued.key.id,
            "token": issued.token,
            "note": "Shown once. Store it now; only its hash is kept.",
            "written_to": str(args.output_file) if args.output_file else None,
        }, indent=2))
    finally:
        services.db.dispose()
    return 0
