"""``moorage snapshot ...`` and ``moorage fork``: snapshots of an app (its release's image,
sealed env vars, links, a tar of each volume, a dump of each linked database) and forks of
them into new apps.

JSON shapes are the API's own objects: ``create``/``show`` a Snapshot, ``list`` a list of
them, ``rm`` ``{"deleted": <snapshot id>}``, ``fork`` a Fork. ``--wait`` polls until the job
ends (a fork: until its deployment runs); then ``succeeded`` exits 0, ``failed`` exits 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.client.commands.follow import exit_for, poll, progress_stream
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("id", "app", "release", "status", "size_bytes", "created_at")
FINISHED = frozenset({"succeeded", "failed"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    snapshot = commands.add_parser("snapshot", help="snapshots of an app: image, env, links, volume and database data")
    sub = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="snapshot an app's current release and its data")
    create.add_argument("app", help="app name or id")
    create.add_argument("--wait", action="store_true", help="wait until succeeded or failed")
    create.set_defaults(api=run_create)

    listing = sub.add_parser("list", parents=[common], help="list snapshots (the tenant's, or one app's)")
    listing.add_argument("--app", help="only this app's (name or id)")
    listing.set_defaults(api=run_list)

    show = sub.add_parser("show", parents=[common], help="show one snapshot (its files and checksums)")
    show.add_argument("snapshot", help="snapshot id")
    show.set_defaults(api=run_show)

    remove = sub.add_parser("rm", parents=[common], help="delete a snapshot and its files")
    remove.add_argument("snapshot", help="snapshot id")
    remove.set_defaults(api=run_rm)

    fork = commands.add_parser(
        "fork", parents=[common], help="make a new app from a snapshot (own volumes, databases, credentials)"
    )
    fork.add_argument("snapshot", help="snapshot id")
    fork.add_argument("--name", required=True, help="the new app's name")
    fork.add_argument("--wait", action="store_true", help="wait until the new app runs (or the fork fails)")
    fork.set_defaults(api=run_fork)


def _waited(args: argparse.Namespace, api: ApiClient, body: dict[str, Any], path: str) -> int:
    if args.wait:
        body = poll(lambda: api.get(path), FINISHED, progress_stream(args.json))
    emit(body, as_json=args.json)
    return exit_for(body["status"]) if args.wait else 0


def run_create(args: argparse.Namespace, api: ApiClient) -> int:
    created = api.post(f"/v1/apps/{args.app}/snapshots")
    return _waited(args, api, created, f"/v1/snapshots/{created['id']}")


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    path = f"/v1/apps/{args.app}/snapshots" if args.app else "/v1/snapshots"
    emit(api.paginate(path), as_json=args.json, columns=COLUMNS)
    return 0


def run_show(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/snapshots/{args.snapshot}"), as_json=args.json)
    return 0


def run_rm(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/snapshots/{args.snapshot}")
    emit({"deleted": args.snapshot}, as_json=args.json)
    return 0


def run_fork(args: argparse.Namespace, api: ApiClient) -> int:
    fork = api.post(f"/v1/snapshots/{args.snapshot}/fork", {"name": args.name})
    return _waited(args, api, fork, f"/v1/snapshots/{args.snapshot}/forks/{fork['id']}")
