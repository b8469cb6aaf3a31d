"""``moorage preview ...``: an app's previews, copies of it built from another source at a host
of their own (``<app>--<slug>.<tenant>.<base-domain>``), deleted at their TTL.

JSON shapes are the API's own Preview objects: ``create`` (with ``--wait``: as it ended),
``show`` a Preview, ``list`` a list of them, ``rm`` ``{"deleted": <preview>, "app": <app>}``.
With ``--wait`` the build log goes to stdout (stderr with ``--json``) and the exit code follows
the deployment: ``running`` → 0, ``failed``/``cancelled`` → 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from control.cli.client.commands.deploy import pack
from control.cli.client.commands.follow import exit_for, follow_deployment, progress_stream
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("name", "status", "expires_at", "url", "id")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    preview = commands.add_parser("preview", help="an app's previews: short-lived copies at their own host")
    sub = preview.add_subparsers(dest="preview_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="build and run a preview of an app from a git ref or a directory")
    create.add_argument("app", help="app name or id")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--git", metavar="URL", help="git repository (as for moorage deploy --git)")
    source.add_argument("--dir", metavar="DIR", help="source directory, uploaded as tar.gz")
    create.add_argument("--ref", default="main", help="git branch, tag or commit (with --git; default main)")
    create.add_argument("--ttl", type=int, metavar="SECONDS", help="seconds until it is deleted (server default if left out)")
    create.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one of the app's env vars (repeatable; NAME= with nothing after it removes one; with --git)",
    )
    create.add_argument("--wait", action="store_true", help="follow the build log until running or failed")
    create.set_defaults(api=run_create)

    listing = sub.add_parser("list", parents=[common], help="list an app's previews")
    listing.add_argument("app", help="app name or id")
    listing.set_defaults(api=run_list)

    show = sub.add_parser("show", parents=[common], help="show one preview")
    show.add_argument("app", help="app name or id")
    show.add_argument("preview", help="preview id, name (<app>--<slug>) or slug")
    show.set_defaults(api=run_show)

    rm = sub.add_parser("rm", parents=[common], help="delete a preview (its route at once, then its container and image)")
    rm.add_argument("app", help="app name or id")
    rm.add_argument("preview", help="preview id, name (<app>--<slug>) or slug")
    rm.set_defaults(api=run_rm)


def env_overrides(pairs: list[str]) -> dict[str, str | None]:
    overrides: dict[str, str | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"moorage preview create: --env takes NAME=VALUE (NAME= removes one), got {pair!r}")
        overrides[name] = value if value else None
    return overrides


def run_create(args: argparse.Namespace, api: ApiClient) -> int:
    overrides = env_overrides(args.env)
    if args.git:
        body: dict[str, Any] = {"git": {"url": args.git, "ref": args.ref}, "env": overrides}
        if args.ttl is not None:
            body["ttl_s"] = args.ttl
        preview = api.post(f"/v1/apps/{args.app}/previews", body)
    else:
        if overrides:
            raise SystemExit("moorage preview create: --env goes with --git (an upload takes the app's env as it is)")
        directory = Path(args.dir).resolve()
        if not directory.is_dir():
            raise SystemExit(f"moorage preview create: {directory} is not a directory")
        preview = api.request(
            "POST",
            f"/v1/apps/{args.app}/previews",
            params={"ttl_s": args.ttl} if args.ttl is not None else None,
            content=pack(directory),
            headers={"Content-Type": "application/gzip"},
        )
    if not args.wait:
        emit(preview, as_json=args.json)
        return 0
    ended = follow_deployment(api, preview["id"], preview["deployment"]["id"], progress_stream(args.json))
    preview = api.get(f"/v1/apps/{args.app}/previews/{preview['id']}")
    emit(preview, as_json=args.json)
    return exit_for(ended["status"])


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/previews")["items"], as_json=args.json, columns=COLUMNS)
    return 0


def run_show(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/apps/{args.app}/previews/{args.preview}"), as_json=args.json)
    return 0


def run_rm(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/apps/{args.app}/previews/{args.preview}")
    emit({"deleted": args.preview, "app": args.app}, as_json=args.json)
    return 0
