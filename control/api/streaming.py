"""Helpers for the deployment endpoints that stream: async handlers (an upload read chunk
by chunk, SSE log streams) declared like ``endpoint`` declares sync ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import get, post
from litestar.response import ServerSentEventMessage

from control.api.endpoints import (
    MUTATING,
    RATE_LIMIT_HEADERS,
    SECURITY,
    IdempotentOperation,
)
from control.api.problems import problem_responses

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream


def async_endpoint(method: str, path: str, *, access: str, errors: tuple[int, ...] = (), summary: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    mutating = method in MUTATING
    statuses = (400, 401, 403, 422, 429, *((409,) if mutating else ()), *errors)
    if mutating:
        kwargs.setdefault("operation_class", IdempotentOperation)
    decorator = post if method == "POST" else get
    return decorator(path, opt={"access": str(access)}, responses=problem_responses(*statuses),
                     response_headers=RATE_LIMIT_HEADERS, security=SECURITY, summary=summary, **kwargs)


def keepalive() -> ServerSentEventMessage:
    return ServerSentEventMessage(comment="keep-alive")
