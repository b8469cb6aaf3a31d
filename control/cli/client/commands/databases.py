"""``moorage db ...``: managed databases, links to apps, backups and restores.

JSON shapes are the API's own objects: ``create``/``get`` a Database, ``list`` a list of
them, ``link`` a Link, ``unlink`` ``{"unlinked": <link id>, "app", "database"}``,
``backup`` a Backup, ``backups`` a list of them, ``restore`` a Restore, ``backup-schedule``
the Database with its new ``backup_schedule``/``backup_retention``. ``--wait`` polls
until the job ends; then ``available``/``succeeded`` exit 0, ``failed`` exits 1.
Connection URLs (passwords) are never printed: apps get them through links.
"""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.client.commands.follow import (
    JOB_TERMINAL,
    exit_for,
    poll,
    progress_stream,
)
from control.cli.client.http import ApiClient, ApiError
from control.cli.client.render import emit

COLUMNS = ("name", "engine", "status", "host", "port", "reason")
BACKUP_COLUMNS = ("id", "trigger", "status", "size", "checksum", "created_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    db = commands.add_parser("db", help="managed databases (postgres, redis), links and backups")
    sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", parents=[common], help="provision a database")
    create.add_argument("name", help="DNS label; apps reach it as db-<name>")
    create.add_argument("--engine", required=True, choices=["postgres", "redis"])
    create.add_argument("--memory-mb", type=int)
    create.add_argument("--backup-schedule", metavar="CRON", help="back up on this cron schedule (UTC), e.g. '0 3 * * *'")
    create.add_argument("--backup-retention", type=int, metavar="N", help="newest backups kept (1-100)")
    create.add_argument("--wait", action="store_true", help="wait until available or failed")
    create.set_defaults(api=run_create)

    sub.add_parser("list", parents=[common], help="list databases").set_defaults(api=run_list)

    get = sub.add_parser("get", parents=[common], help="show one database")
    get.add_argument("db", help="database name or id")
    get.set_defaults(api=run_get)

    link = sub.add_parser("link", parents=[common], help="give an app the database's URL (from its next release)")
    link.add_argument("db", help="database name or id")
    link.add_argument("--app", required=True, help="app name or id")
    link.add_argument("--env-name", help="variable name (default DATABASE_URL / REDIS_URL)")
    link.set_defaults(api=run_link)

    unlink = sub.add_parser("unlink", parents=[common], help="remove an app's link (from its next release)")
    unlink.add_argument("db", help="database name or id")
    unlink.add_argument("--app", required=True, help="app name or id")
    unlink.set_defaults(api=run_unlink)

    backup = sub.add_parser("backup", parents=[common], help="back up a database")
    backup.add_argument("db", help="database name or id")
    backup.add_argument("--wait", action="store_true", help="wait until succeeded or failed")
    backup.set_defaults(api=run_backup)

    schedule = sub.add_parser(
        "backup-schedule", parents=[common], help="back a database up on a cron schedule, keeping the newest N"
    )
    schedule.add_argument("db", help="database name or id")
    when = schedule.add_mutually_exclusive_group()
    when.add_argument("--cron", metavar="CRON", help="cron syntax in UTC: '0 3 * * *', '@daily', ...")
    when.add_argument("--off", action="store_true", help="stop scheduled backups (the backups made stay)")
    schedule.add_argument("--keep", type=int, metavar="N", help="newest backups kept, from the next backup on (1-100)")
    schedule.set_defaults(api=run_backup_schedule)

    backups = sub.add_parser("backups", parents=[common], help="list a database's backups")
    backups.add_argument("db", help="database name or id")
    backups.set_defaults(api=run_backups)

    restore = sub.add_parser("restore", parents=[common], help="restore a backup (into --target, default its own)")
    restore.add_argument("db", help="database name or id the backup belongs to")
    restore.add_argument("--backup", required=True, metavar="ID", help="backup id (see db backups)")
    restore.add_argument("--target", metavar="DB", help="database of the same engine to restore into")
    restore.add_argument("--wait", action="store_true", help="wait until succeeded or failed")
    restore.set_defaults(api=run_restore)


def _waited(args: argparse.Namespace, api: ApiClient, body: dict[str, Any], path: str) -> int:
    if args.wait:
        body = poll(lambda: api.get(path), JOB_TERMINAL, progress_stream(args.json))
    emit(body, as_json=args.json)
    return exit_for(body["status"]) if args.wait else 0


def run_create(args: argparse.Namespace, api: ApiClient) -> int:
    body: dict[str, Any] = {"name": args.name, "engine": args.engine}
    if args.memory_mb:
        body["memory_mb"] = args.memory_mb
    if args.backup_schedule:
        body["backup_schedule"] = args.backup_schedule
    if args.backup_retention:
        body["backup_retention"] = args.backup_retention
    created = api.post("/v1/databases", body)
    return _waited(args, api, created, f"/v1/databases/{created['id']}")


def run_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate("/v1/databases"), as_json=args.json, columns=COLUMNS)
    return 0


def run_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/databases/{args.db}"), as_json=args.json)
    return 0


def run_link(args: argparse.Namespace, api: ApiClient) -> int:
    body = {"database": args.db, **({"env_name": args.env_name} if args.env_name else {})}
    emit(api.post(f"/v1/apps/{args.app}/links", body), as_json=args.json)
    return 0


def run_unlink(args: argparse.Namespace, api: ApiClient) -> int:
    links = api.get(f"/v1/apps/{args.app}/links")["items"]
    link = next((lk for lk in links if args.db in (lk["database_name"], lk["database_id"])), None)
    if link is None:
        raise ApiError(
            404,
            {"code": "not-found", "detail": f"App '{args.app}' has no link to '{args.db}'; see GET /v1/apps/{args.app}/links."},
        )
    api.delete(f"/v1/apps/{args.app}/links/{link['id']}")
    emit({"unlinked": link["id"], "app": args.app, "database": link["database_name"]}, as_json=args.json)
    return 0


def run_backup(args: argparse.Namespace, api: ApiClient) -> int:
    backup = api.post(f"/v1/databases/{args.db}/backups")
    return _waited(args, api, backup, f"/v1/databases/{args.db}/backups/{backup['id']}")


def run_backup_schedule(args: argparse.Namespace, api: ApiClient) -> int:
    body: dict[str, Any] = {}
    if args.cron or args.off:
        body["backup_schedule"] = None if args.off else args.cron
    if args.keep is not None:
        body["backup_retention"] = args.keep
    if not body:
        raise ApiError(400, {"code": "nothing-to-change", "detail": "Say what to change: --cron CRON, --off and/or --keep N."})
    emit(api.patch(f"/v1/databases/{args.db}", body), as_json=args.json)
    return 0


def run_backups(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate(f"/v1/databases/{args.db}/backups"), as_json=args.json, columns=BACKUP_COLUMNS)
    return 0


def run_restore(args: argparse.Namespace, api: ApiClient) -> int:
    restore = api.post(f"/v1/databases/{args.db}/backups/{args.backup}/restore", {"target": args.target})
    path = f"/v1/databases/{args.db}/backups/{args.backup}/restores/{restore['id']}"
    return _waited(args, api, restore, path)
