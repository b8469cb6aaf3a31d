"""``moorage deploy``: upload a source directory (or point at git) and optionally wait.

JSON shape (stdout, also with ``--wait``)::

    {"app": "<name>", "url": "http://<app>.<tenant>.<base-domain>", "deployment": <Deployment>}

With ``--wait`` the deployment is the final one and the exit code follows its status:
``running`` → 0, ``failed``/``cancelled`` → 1. Build log lines and ``--> <status>``
transitions go to stdout, or to stderr with ``--json``.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from control.cli.client.commands.follow import (
    exit_for,
    follow_deployment,
    progress_stream,
)
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

EXCLUDED = frozenset({".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    deploy = commands.add_parser("deploy", parents=[common], help="deploy a source directory (or a git ref)")
    deploy.add_argument("dir", nargs="?", default=".", help="source directory (default: .)")
    deploy.add_argument("--app", help="app name (default: the directory's name)")
    deploy.add_argument(
        "--git",
        metavar="URL",
        help="deploy from a git repository instead of DIR (https:// on a public host, no credentials; file:// only under an operator-allowed directory)",
    )
    deploy.add_argument("--ref", default="main", help="git branch, tag or commit (with --git; default main)")
    deploy.add_argument("--wait", action="store_true", help="follow the build log until running or failed")
    deploy.set_defaults(api=run_deploy)


def pack(directory: Path) -> bytes:
    """tar.gz of ``directory``'s contents (paths relative to it), skipping EXCLUDED folders."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDED)
            for name in sorted(files):
                path = Path(root) / name
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return raw.getvalue()


def upload(api: ApiClient, app: str, archive: bytes) -> dict[str, Any]:
    return api.request(  # type: ignore[no-any-return]
        "POST",
        f"/v1/apps/{app}/deployments",
        content=archive,
        headers={"Content-Type": "application/gzip"},
    )  # keyed whatever its size (the server spools large keyed bodies to disk): a retry never deploys twice


def finish(args: argparse.Namespace, api: ApiClient, app: str, deployment: dict[str, Any]) -> int:
    """Shared by deploy and rollback: wait if asked, print the stable shape, pick the exit code."""
    if args.wait:
        deployment = follow_deployment(api, app, deployment["id"], progress_stream(args.json))
    url = api.get(f"/v1/apps/{app}").get("url", "")
    emit({"app": app, "url": url, "deployment": deployment}, as_json=args.json)
    return exit_for(deployment["status"]) if args.wait else 0


def run_deploy(args: argparse.Namespace, api: ApiClient) -> int:
    if args.git:
        app = args.app or Path(args.git.rstrip("/")).stem
        deployment = api.post(f"/v1/apps/{app}/deployments", {"git": {"url": args.git, "ref": args.ref}})
    else:
        directory = Path(args.dir).resolve()
        if not directory.is_dir():
            raise SystemExit(f"moorage deploy: {directory} is not a directory")
        app = args.app or directory.name
        deployment = upload(api, app, pack(directory))
    return finish(args, api, app, deployment)
