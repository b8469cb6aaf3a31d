"""A real control plane on a real socket: the app factory under uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from litestar import Litestar
from litestar.types import ASGIApp

from control.app import create_app
from control.cli.server import proxy_options
from control.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(settings: Settings, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> Iterator[tuple[str, Litestar]]:
    """``moorage serve`` in a thread, on ``settings.port`` (use ``free_port()``); ``wrap``
    puts an ASGI layer between uvicorn and the app (a server behaviour uvicorn lacks)."""
    app = create_app(settings)
    config = uvicorn.Config(
        wrap(app) if wrap else app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on",
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
