"""``moorage serve`` and ``moorage migrate``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TypedDict

from control.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the control plane (HTTP API)")
    serve.add_argument("--host", help="bind address (default MOORAGE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default MOORAGE_PORT or 7800)")
    serve.set_defaults(run=run_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(run=run_migrate)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from control.app import create_app

    settings = Settings.from_env()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.with_overrides(**overrides)
    app = create_app(settings)
    services = app.state.services
    try:
        services.route_api(settings.host, settings.port)
    except OSError as exc:  # the API itself still serves; tenants' code cannot reach it until fixed
        print(f"moorage serve: could not route the API through Traefik: {exc}", file=sys.stderr)

    def unroute(_app: object) -> None:  # as the server stops: uvicorn re-raises SIGTERM after it, never returning
        with contextlib.suppress(OSError):
            services.unroute_api(settings.host, settings.port)

    app.on_shutdown.insert(0, unroute)
    # No global write/keep-alive deadline that would cut long log streams.
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=10,
        **proxy_options(settings),
    )  # fmt: skip
    return 0


class ProxyOptions(TypedDict, total=False):
    """The keywords of uvicorn.run (and uvicorn.Config) that decide whose X-Forwarded-For counts."""

    proxy_headers: bool
    forwarded_allow_ips: list[str]


def proxy_options(settings: Settings) -> ProxyOptions:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise, which would let
    any local process pick the address that auth throttling counts: trust exactly
    MOORAGE_TRUSTED_PROXIES, and nobody when it is empty."""
    trusted = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    if not trusted:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}


def run_migrate(_args: argparse.Namespace) -> int:
    from control.logging import configure_logging
    from control.store import migrate
    from control.store.database import Store

    settings = Settings.from_env()
    configure_logging("warning", settings.log_format)  # stdout carries the result
    db = Store(settings.database_url)
    try:
        migrate.upgrade(db.engine)
        print(json.dumps({"migrated": True, "revision": migrate.current_revision(db.engine)}))
    finally:
        db.dispose()
    return 0
