"""Client subcommands: one module per resource, each with ``register(commands, common)``."""

from __future__ import annotations

import argparse

from control.cli.client.commands import (
    apps,
    databases,
    deploy,
    domains,
    env,
    identity,
    inference,
    logs,
    onboarding,
    previews,
    releases,
    runs,
    sandbox,
    skills,
    snapshots,
    volumes,
)

MODULES = (
    identity,
    onboarding,
    apps,
    env,
    deploy,
    previews,
    releases,
    logs,
    runs,
    sandbox,
    databases,
    volumes,
    snapshots,
    domains,
    inference,
    skills,
)


def common_options() -> argparse.ArgumentParser:
    """Flags every API command takes (argparse parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON (stable shapes)")
    common.add_argument("--url", help="API base URL (MOORAGE_URL; default http://127.0.0.1:7800)")
    common.add_argument("--api-key", help="API key (prefer MOORAGE_API_KEY or a profile)")
    common.add_argument("--profile", help="profile in ~/.config/moorage/profiles.toml (MOORAGE_PROFILE)")
    common.add_argument("--retry-for", type=float, default=120.0, metavar="SECONDS", help="retry 429/503 for this long (120)")
    return common


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    for module in MODULES:
        module.register(commands, common)
