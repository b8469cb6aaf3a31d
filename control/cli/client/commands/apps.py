"""``moorage apps ...``: list, create, show, change and delete apps."""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("name", "id", "port", "replicas", "builder", "health_check_path", "updated_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    apps = commands.add_parser("apps", help="manage apps")
    sub = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")

    sub.add_parser("list", parents=[common], help="list apps").set_defaults(api=run_list)

    create = sub.add_parser("create", parents=[common], help="create an app")
    create.add_argument("name", help="DNS label, unique in your tenant")
    _settings_flags(create)
    create.set_defaults(api=run_create)

    show = sub.add_parser("get", parents=[common], help="show one app")
    show.add_argument("app", help="app name or id")
    show.set_defaults(api=run_get)

    update = sub.add_parser("update", parents=[common], help="change an app's settings")
    update.add_argument("app", help="app name or id")
    _settings_flags(update)
    update.set_defaults(api=run_update)

    delete = sub.add_parser("delete", parents=[common], help="delete an app")
    delete.add_argument("app", help="app name or id")
    delete.add_argument("--purge", action="store_true", help="also delete its volumes and their data (needed when it has any)")
    delete.set_defaults(api=run_delete)


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="port the app listens on")
    parser.add_argument("--health-path", dest="health_check_path", help="HTTP health check path")
    parser.add_argument("--builder", choices=["auto", "dockerfile", "nixpacks"])
    parser.add_argument("--description")
    parser.add_argument("--replicas", type=int, help="containers the app runs in, balanced (applies within seconds)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("port", "health_check_path", "builder", "description", "replicas")
    return {f: getattr(args, f) for f in fields if getattr(args, f) is not None}


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate("/v1/apps"), as_json=args.json, columns=COLUMNS)
    return 0


def run_create(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.post("/v1/apps", {"name": args.name, **_settings(args)}), as_json=args.json)
    return 0


def run_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}"), as_json=args.json)
    return 0


def run_update(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.patch(f"/v1/apps/{args.app}", _settings(args)), as_json=args.json)
    return 0


def run_delete(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/apps/{args.app}" + ("?purge=true" if args.purge else ""))
    emit({"deleted": args.app}, as_json=args.json)
    return 0
