"""``moorage volumes ...``: an app's persistent volumes.

JSON shapes are the API's own objects: ``create``/``get`` a Volume, ``list`` a list of them,
``delete`` ``{"deleted": <volume>, "app": <app>}``. A volume is mounted from the app's next
deployment; deleting one deletes its data (``--force`` also while the app's container mounts
it: that container is stopped first).
"""

from __future__ import annotations

import argparse

from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("name", "mount_path", "size_mb", "used_mb", "status", "quota", "id")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    volumes = commands.add_parser("volumes", help="an app's persistent volumes (kept across deploys)")
    sub = volumes.add_subparsers(dest="volumes_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="create a volume (mounted from the app's next deployment)")
    create.add_argument("app", help="app name or id")
    create.add_argument("name", help="DNS label, unique in the app")
    create.add_argument("--mount-path", required=True, help="absolute path in the container, e.g. /app/instance")
    create.add_argument("--size-mb", required=True, type=int, help="size in MiB")
    create.set_defaults(api=run_create)

    listing = sub.add_parser("list", parents=[common], help="list an app's volumes")
    listing.add_argument("app", help="app name or id")
    listing.set_defaults(api=run_list)

    get = sub.add_parser("get", parents=[common], help="show one volume")
    get.add_argument("app", help="app name or id")
    get.add_argument("volume", help="volume name or id")
    get.set_defaults(api=run_get)

    delete = sub.add_parser("delete", parents=[common], help="delete a volume and its data")
    delete.add_argument("app", help="app name or id")
    delete.add_argument("volume", help="volume name or id")
    delete.add_argument("--force", action="store_true", help="also while the app's running container mounts it")
    delete.set_defaults(api=run_delete)


def run_create(args: argparse.Namespace, api: ApiClient) -> int:
    body = {"name": args.name, "mount_path": args.mount_path, "size_mb": args.size_mb}
    emit(api.post(f"/v1/apps/{args.app}/volumes", body), as_json=args.json)
    return 0


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/volumes")["items"], as_json=args.json, columns=COLUMNS)
    return 0


def run_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/volumes/{args.volume}"), as_json=args.json)
    return 0


def run_delete(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/apps/{args.app}/volumes/{args.volume}" + ("?force=true" if args.force else ""))
    emit({"deleted": args.volume, "app": args.app}, as_json=args.json)
    return 0
