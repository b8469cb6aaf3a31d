"""``moorage env ...``: an app's environment variables (secret by default)."""

from __future__ import annotations

import argparse

from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("name", "version", "secret", "updated_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    env = commands.add_parser("env", help="manage an app's environment variables")
    sub = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", parents=[common], help="names and versions (values with --reveal)")
    listing.add_argument("app", help="app name or id")
    listing.add_argument("--reveal", action="store_true", help="include values (needs the admin scope)")
    listing.set_defaults(api=run_list)

    set_ = sub.add_parser("set", parents=[common], help="set variables: NAME=VALUE ...")
    set_.add_argument("app", help="app name or id")
    set_.add_argument("pairs", nargs="+", metavar="NAME=VALUE")
    set_.add_argument("--plain", action="store_true", help="not secret: value may be shown in listings")
    set_.set_defaults(api=run_set)

    unset = sub.add_parser("unset", parents=[common], help="remove variables: NAME ...")
    unset.add_argument("app", help="app name or id")
    unset.add_argument("names", nargs="+", metavar="NAME")
    unset.set_defaults(api=run_unset)


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    env = api.get(f"/v1/apps/{args.app}/env", reveal="true" if args.reveal else None)
    columns = (*COLUMNS, "value") if args.reveal else COLUMNS
    emit(env if args.json else env["vars"], as_json=args.json, columns=columns)
    return 0


def run_set(args: argparse.Namespace, api: ApiClient) -> int:
    updates = {}
    for pair in args.pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"moorage env set: expected NAME=VALUE, got {pair!r}")
        updates[name] = {"value": value, "secret": not args.plain}
    env = api.patch(f"/v1/apps/{args.app}/env", {"vars": updates})
    emit(env if args.json else env["vars"], as_json=args.json, columns=COLUMNS)
    return 0


def run_unset(args: argparse.Namespace, api: ApiClient) -> int:
    env = api.patch(f"/v1/apps/{args.app}/env", {"vars": dict.fromkeys(args.names)})
    emit(env if args.json else env["vars"], as_json=args.json, columns=COLUMNS)
    return 0
