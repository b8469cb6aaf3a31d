"""Server-sent events for the gateway: parse an engine's stream, keep an idle client
connection alive, and the error event a client gets when a stream breaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
import msgspec

T = TypeVar("T")
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each event, as the engine sends them (comments and other fields dropped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line:
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            continue
        if lines:
            yield "\n".join(lines)
            lines = []
    if lines:  # an engine that closes without the blank line after its last event
        yield "\n".join(lines)


async def with_keepalive(source: AsyncIterator[T], interval_s: float) -> AsyncIterator[T | None]:
    """Items of ``source``; ``None`` whenever it stays silent for ``interval_s`` (send a
    keep-alive comment then). The pending read is never cancelled by a keep-alive, only
    when the consumer goes away."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(source.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"


def event(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def error_event(message: str, *, code: str, request_id: str) -> bytes:
    """OpenAI's error shape inside the stream; the official client raises APIError on it."""
    return event({"error": {"message": message, "type": "upstream_error", "code": code, "request_id": request_id}})
