from __future__ import annotations

import argparse

from control.cli.client.http import ApiClient
from control.cli.client.render import emit


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    whoami = commands.add_parser("whoami", parents=[common], help="show the key in use, its tenant and scopes")
    whoami.set_defaults(api=run_whoami)


def run_whoami(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get("/v1/whoami"), as_json=args.json)
    return 0
