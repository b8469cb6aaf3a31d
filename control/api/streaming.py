"""Helpers for endpoints that stream (SSE log streams, relayed completions)."""

from __future__ import annotations

from litestar.response import ServerSentEventMessage

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream


def keepalive() -> ServerSentEventMessage:
    return ServerSentEventMessage(comment="keep-alive")
