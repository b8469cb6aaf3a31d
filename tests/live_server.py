"""A real control plane on a real socket: the app factory under uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from litestar import Litestar
from litestar.types import ASGIApp

from control.app import create_app
from control.cli.server import proxy_options
from control.security.principal import Principal
from control.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(settings: Settings, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> Iterator[tuple[str, Litestar]]:
    """``moorage serve`` in a thread, on ``settings.host`` (127.0.0.1 unless the test says)
    and ``settings.port`` (use ``free_port()``); ``wrap`` puts an ASGI layer between uvicorn
    and the app (a server behaviour uvicorn lacks)."""
    app = create_app(settings)
    config = uvicorn.Config(
        wrap(app) if wrap else app, host=settings.host, port=settings.port, log_config=None, lifespan="on",
        **proxy_options(settings),  # as `moorage serve`
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class CliTenant:
    url: str
    app: Litestar
    token: str


@contextmanager
def cli_tenant(data_dir: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Iterator[CliTenant]:
    """A live control plane (no workers, no reconciler) with tenant ``acme`` and an admin key,
    the CLI pointed at it through its environment."""
    settings = Settings(
        data_dir=data_dir, port=free_port(), base_domain="apps.test", job_workers=0, reconcile_interval_s=0, **overrides
    )  # type: ignore[arg-type]
    with serving(settings) as (url, app):
        services = app.state.services
        tenant = services.tenants.create("acme")
        operator = services.keys.bootstrap_operator("op").key
        issued = services.keys.issue(
            Principal.of(operator.id, None, operator.scopes), tenant.id, name="cli", scopes=["admin"], expires_at=None
        )
        monkeypatch.setenv("MOORAGE_URL", url)
        monkeypatch.setenv("MOORAGE_API_KEY", issued.token)
        monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
        yield CliTenant(url, app, issued.token)
