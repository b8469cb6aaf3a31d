"""Helpers for endpoints that stream (SSE log streams, relayed completions)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from litestar.response import ServerSentEventMessage

from control.jobs.build import read_from

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
POLL_S = 0.25


def keepalive() -> ServerSentEventMessage:
    return ServerSentEventMessage(comment="keep-alive")


async def follow_log(path: Path, final_status: Callable[[], dict[str, Any] | None]) -> AsyncIterator[ServerSentEventMessage]:
    """A log file that grows while its job runs, as SSE: ``event: log`` per complete line, a
    keep-alive while nothing happens, and once ``final_status()`` (a blocking read, run in a
    thread) answers a dict instead of None, the rest of the file and ``event: status`` with it."""
    offset, quiet_since = 0, time.monotonic()
    while True:
        text, offset = await anyio.to_thread.run_sync(read_from, path, offset)
        for line in text.splitlines():
            yield ServerSentEventMessage(data=line, event="log")
        if text:
            quiet_since = time.monotonic()
        final = await anyio.to_thread.run_sync(final_status)
        if final is not None:
            text, offset = await anyio.to_thread.run_sync(read_from, path, offset)
            for line in text.splitlines():
                yield ServerSentEventMessage(data=line, event="log")
            yield ServerSentEventMessage(data=json.dumps(final), event="status")
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield keepalive()
        await asyncio.sleep(POLL_S)
