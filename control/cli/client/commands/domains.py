"""``moorage domains ...``: an app's custom domains.

JSON shapes are the API's own objects: ``add``/``get``/``verify`` a Domain (with
``verification``: the record to create or the URL that must reach the platform, and
``certificate``), ``list`` a list of them, ``remove`` ``{"removed": <hostname>, "app": <app>}``.
``--wait`` polls until the domain is ``active`` (exit 0) or ``failed`` (exit 1, ``reason``
says which record to create), printing each status on stderr.
"""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.client.commands.follow import poll, progress_stream
from control.cli.client.exit_codes import FAILED, OK
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("hostname", "status", "https", "reason", "id")
TERMINAL = frozenset({"active", "failed"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    domains = commands.add_parser("domains", help="an app's custom domains (ownership proof, HTTPS)")
    sub = domains.add_subparsers(dest="domains_command", required=True, metavar="ACTION")

    add = sub.add_parser("add", parents=[common], help="claim a hostname for the app; prints the record to create")
    add.add_argument("app", help="app name or id")
    add.add_argument("hostname", help="e.g. shop.example.com")
    add.add_argument("--method", choices=["http", "dns"], help="how control is proven (default: the platform's first)")
    add.add_argument("--hsts", action="store_true", help="send Strict-Transport-Security on HTTPS answers")
    add.add_argument("--wait", action="store_true", help="wait until active or failed")
    add.set_defaults(api=run_add)

    listing = sub.add_parser("list", parents=[common], help="list an app's domains")
    listing.add_argument("app", help="app name or id")
    listing.set_defaults(api=run_list)

    for name, helptext, handler in (
        ("get", "show one domain (verification, certificate)", run_get),
        ("verify", "look for the ownership proof again (after creating the record)", run_verify),
        ("remove", "remove a domain (its route goes at once)", run_remove),
    ):
        one = sub.add_parser(name, parents=[common], help=helptext)
        one.add_argument("app", help="app name or id")
        one.add_argument("hostname", help="hostname or domain id")
        if name in ("get", "verify"):
            one.add_argument("--wait", action="store_true", help="wait until active or failed")
        one.set_defaults(api=handler)


def _shown(args: argparse.Namespace, api: ApiClient, body: dict[str, Any]) -> int:
    if getattr(args, "wait", False):
        body = poll(lambda: api.get(f"/v1/apps/{args.app}/domains/{body['id']}"), TERMINAL, progress_stream(args.json))
    emit(body, as_json=args.json)
    if getattr(args, "wait", False):
        return OK if body["status"] == "active" else FAILED
    return OK


def run_add(args: argparse.Namespace, api: ApiClient) -> int:
    request: dict[str, Any] = {"hostname": args.hostname, "hsts": args.hsts}
    if args.method:
        request["method"] = args.method
    return _shown(args, api, api.post(f"/v1/apps/{args.app}/domains", request))


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate(f"/v1/apps/{args.app}/domains"), as_json=args.json, columns=COLUMNS)
    return OK


def run_get(args: argparse.Namespace, api: ApiClient) -> int:
    return _shown(args, api, api.get(f"/v1/apps/{args.app}/domains/{args.hostname}"))


def run_verify(args: argparse.Namespace, api: ApiClient) -> int:
    return _shown(args, api, api.post(f"/v1/apps/{args.app}/domains/{args.hostname}/verify"))


def run_remove(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/apps/{args.app}/domains/{args.hostname}")
    emit({"removed": args.hostname, "app": args.app}, as_json=args.json)
    return OK
