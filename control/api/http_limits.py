"""HTTP limits uvicorn does not enforce itself: header size, and body time.

Headers: uvicorn's h11 parser refuses only headers that stay incomplete past 16 KiB
after a read (so up to about 80 KiB can get through in one read). ``HeaderLimit``
answers 431 ``request-header-fields-too-large`` when all header lines together exceed
``max_header_bytes``, before any authentication or handler work.

Bodies in time: a slow-body (slowloris-style) client is cut off.

uvicorn has no per-request body deadline: a client that sends its headers and then
trickles the body holds a connection and a handler for as long as it likes. This layer
wraps ``receive`` so that the body must arrive within ``request_body_timeout_s`` in all
and with no gap longer than ``request_body_idle_timeout_s``; otherwise the request ends
with 408 ``request-timeout`` (problem+json, ``Connection: close``). Reading after the
body (waiting for a disconnect, as streams do) is never timed. 0 disables a limit.
"""

from __future__ import annotations

import anyio
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import (
    ASGIApp,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from control.api.problems import send_problem


class HeaderLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and self.max_bytes:
            size = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if size > self.max_bytes:
                detail = f"The request headers total {size} bytes; at most {self.max_bytes} are accepted. Send fewer or shorter headers."
                await send_problem(
                    scope, receive, send, 431, "request-header-fields-too-large", detail, headers={"Connection": "close"}
                )
                return
        await self.app(scope, receive, send)


class RequestBodyTimeout(HTTPException):
    status_code = 408


class BodyTimeout:
    def __init__(self, app: ASGIApp, *, total_s: float, idle_s: float) -> None:
        self.app = app
        self.total_s = total_s
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not (self.total_s or self.idle_s):
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.total_s if self.total_s else None
        body_done = False

        async def timed_receive() -> ReceiveMessage:
            nonlocal body_done
            if body_done:
                return await receive()
            limits = [self.idle_s] if self.idle_s else []
            if deadline is not None:
                limits.append(max(0.0, deadline - anyio.current_time()))
            with anyio.move_on_after(min(limits)) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise RequestBodyTimeout(
                    detail="The request body arrived too slowly and was abandoned. Send the whole body promptly and retry.",
                    headers={"Connection": "close"},
                )
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
