"""Outermost ASGI layer: a request id on every log line and every response, and one
access log line per request.

It wraps Litestar's whole handler (not a route middleware) so that answers produced
before routing, such as 404 and 405, carry the id too.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control.domain.names import REQUEST_ID
from control.ids import new_id

HEADER = b"x-request-id"
access_log = structlog.get_logger("moorage.access")


def request_id_of(scope: Scope | dict[str, Any]) -> str:
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        request_id = state["request_id"] = _incoming_id(scope) or new_id("req")
    return request_id


def _incoming_id(scope: Scope | dict[str, Any]) -> str | None:
    # A caller's own id is kept (so agents can correlate) only if it is safe to log.
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            text = value.decode("latin-1")
            return text if REQUEST_ID.accepts(text) else None
    return None


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                user = scope.get("user")
                access_log.info(
                    "request",
                    method=scope.get("method", "GET"),  # http scopes only reach here
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    tenant_id=getattr(user, "tenant_id", None),
                    key_id=getattr(user, "key_id", None),
                )
