"""Server-sent events for the gateway: parse an engine's stream, keep an idle client
connection alive, and the error event a client gets when a stream breaks. Everything here
runs for every event of every stream: it is kept lean on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import httpx
import msgspec

T = TypeVar("T")
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


async def sse_batches(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The `data` of each event the engine sends (comments and other fields dropped), as
    bytes, one list per network read: events that arrive together are relayed together,
    in one write to the client, and nothing is decoded to text on the way."""
    pending = b""  # an incomplete last line, kept for the next read
    data: list[bytes] = []
    async for chunk in response.aiter_bytes():
        lines = (pending + chunk).splitlines(keepends=True) if pending else chunk.splitlines(keepends=True)
        # A last line without its end is incomplete; one ending in '\r' may be half of '\r\n'.
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        events: list[bytes] = []
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    events.append(b"\n".join(data))
                    data = []
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        if events:
            yield events
    last = pending.rstrip(b"\r\n")
    if last.startswith(b"data:"):
        data.append(last[5:].removeprefix(b" "))
    if data:  # an engine that closes without the blank line after its last event
        yield [b"\n".join(data)]


_ITEM, _KEEPALIVE, _END, _FAILED = range(4)


async def with_keepalive(source: AsyncIterator[T], interval_s: float) -> AsyncGenerator[T | None, None]:
    """Items of ``source``; ``None`` whenever it stays silent for ``interval_s`` (send a
    keep-alive comment then). The pending read is never cancelled by a keep-alive, only
    when the consumer goes away.

    One task reads ``source`` into a one-item queue for the whole stream, and a timer puts a
    keep-alive there when the consumer has waited ``interval_s``: this runs once per event
    of every stream, and a task per item cost more than relaying the event itself."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put((_ITEM, item))
        except Exception as exc:  # noqa: BLE001 (handed to the consumer, which raises it as its own)
            await queue.put((_FAILED, exc))
        else:
            await queue.put((_END, None))

    def nudge() -> None:
        if queue.empty():
            queue.put_nowait((_KEEPALIVE, None))

    reader = loop.create_task(pump())
    try:
        while True:
            timer = loop.call_later(interval_s, nudge) if queue.empty() else None
            try:
                kind, value = await queue.get()
            finally:
                if timer is not None:
                    timer.cancel()
            if kind == _ITEM:
                yield value
            elif kind == _KEEPALIVE:
                yield None
            elif kind == _END:
                return
            else:
                raise value
    finally:
        reader.cancel()
        reader.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"


def event(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def error_event(message: str, *, code: str, request_id: str) -> bytes:
    """OpenAI's error shape inside the stream; the official client raises APIError on it."""
    return event({"error": {"message": message, "type": "upstream_error", "code": code, "request_id": request_id}})
