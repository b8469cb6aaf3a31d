"""``moorage status``, ``releases`` and ``rollback``.

``status --json``: ``{"app": <App>, "release": <Release current>|null, "deployment": <latest Deployment>|null}``.
``releases --json``: ``[<Release>, ...]`` oldest first, each with the ``config`` it was made
with (env var names and versions, database links; never values) and ``image_kept`` (a
rollback target: its image is still on the host). ``rollback --json``: as ``deploy``."""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.client.commands.deploy import finish
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

COLUMNS = ("name", "current", "image_kept", "config", "deployment_id", "rollback_of", "created_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[common], help="an app, its current release and latest deployment")
    status.add_argument("app", help="app name or id")
    status.set_defaults(api=run_status)

    releases = commands.add_parser("releases", parents=[common], help="list an app's releases")
    releases.add_argument("app", help="app name or id")
    releases.set_defaults(api=run_releases)

    rollback = commands.add_parser("rollback", parents=[common], help="roll back to an earlier release")
    rollback.add_argument("app", help="app name or id")
    rollback.add_argument("--release", required=True, metavar="vN", help="the release to go back to, e.g. v1")
    rollback.add_argument("--wait", action="store_true", help="follow the rollback until running or failed")
    rollback.set_defaults(api=run_rollback)


def run_status(args: argparse.Namespace, api: ApiClient) -> int:
    app = api.get(f"/v1/apps/{args.app}")
    current = next((r for r in api.paginate(f"/v1/apps/{args.app}/releases") if r["current"]), None)
    deployments = api.paginate(f"/v1/apps/{args.app}/deployments")
    latest = deployments[-1] if deployments else None
    if args.json:
        emit({"app": app, "release": current, "deployment": latest}, as_json=True)
    else:
        emit(
            {
                "app": app["name"],
                "url": app["url"],
                "release": current and current["name"],
                "deployment": latest and f"{latest['id']} {latest['status']}",
                "reason": latest and latest["reason"],
            },
            as_json=False,
        )
    return 0


def run_releases(args: argparse.Namespace, api: ApiClient) -> int:
    releases = api.paginate(f"/v1/apps/{args.app}/releases")
    if args.json:
        emit(releases, as_json=True)
    else:  # the config by names and versions (the API never sends values)
        emit([{**r, "config": config_line(r.get("config"))} for r in releases], as_json=False, columns=COLUMNS)
    return 0


def config_line(config: dict[str, Any] | None) -> str:
    if config is None:
        return "(not kept)"
    parts = [f"{v['name']} v{v['version']}" for v in config["vars"]] + [
        f"{k['env_name']}->{k['database_id']}" for k in config["links"]
    ]
    return ", ".join(parts) or "-"


def run_rollback(args: argparse.Namespace, api: ApiClient) -> int:
    deployment = api.post(f"/v1/apps/{args.app}/rollback", {"release": args.release})
    return finish(args, api, args.app, deployment)
