"""Idempotency-Key on POST/PUT/PATCH/DELETE: HTTP glue around ``domain.idempotency``.

Sits after authentication (the key is scoped to ``scope["user"]``) and after the rate
limiter. It buffers the request body (to fingerprint it, then feeds it to the app again),
and buffers the response so that it is stored *before* the client sees it: the answer is
kept in the request's unit of work, which commits it together with the handler's writes
(``control.api.unit_of_work``), so a client that got an answer can always get the same
answer again, and an answer that was not kept means nothing was done. Mutating endpoints
do not stream (long operations answer 202 and are polled), so buffering costs little.

Kept for replay: status, body and the headers in ``KEPT_HEADERS``; everything else
(request id, rate-limit headers) is fresh on every answer.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import anyio
import anyio.to_thread
import structlog
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from control.api.problems import retry_after_header, send_problem
from control.api.unit_of_work import current_unit_of_work
from control.domain.idempotency import (
    KEY_RULE,
    Claimed,
    IdempotencyService,
    InFlight,
    KeyReused,
    Replay,
    fingerprint,
    parse_key,
)
from control.domain.records import StoredResponse
from control.http_methods import MUTATING
from control.security.principal import Principal

HEADER = b"idempotency-key"
REPLAYED_HEADER = b"idempotent-replayed"
KEPT_HEADERS = frozenset({b"content-type", b"location", b"content-location", b"etag", b"last-modified", b"link"})
MAX_BODY_BYTES = 10 * 1024 * 1024  # Litestar's own default request limit
MAX_STORED_BYTES = 1024 * 1024  # larger answers are passed on but not kept (the key is released)
log = structlog.get_logger("moorage.idempotency")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:  # required in an HTTP scope (ASGI spec)
        if key == name:
            return value.decode("latin-1")
    return None


def _metric(scope: Scope, outcome: str) -> None:
    scope["app"].state.services.metrics.idempotency(outcome)


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when it exceeds ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        event = cast("HTTPRequestEvent", message)
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def _replaying_receive(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            event: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return event
        return await receive()  # after the body: wait for a disconnect, as the server would

    return replay


class _Captured:
    """The app's response, held back until it has been stored."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)

    def storable(self) -> StoredResponse | None:
        if not self.complete or self.status >= 500 or len(self.body) > MAX_STORED_BYTES:
            return None
        kept = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers if n.lower() in KEPT_HEADERS)
        return StoredResponse(self.status, kept, bytes(self.body))


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("user")
        if scope["type"] != ScopeType.HTTP or scope["method"] not in MUTATING or not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        raw_key = _header(scope, HEADER)
        if raw_key is None:  # the header is optional: without it the request simply runs
            await self.app(scope, receive, send)
            return
        key = parse_key(raw_key)
        if key is None:
            _metric(scope, "invalid_key")
            detail = f"The Idempotency-Key header must be {KEY_RULE}. Send a new, valid key."
            await send_problem(scope, receive, send, 400, "idempotency-key-invalid", detail)
            return
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return  # nothing claimed yet, nobody to answer
        if body is None:
            await send_problem(scope, receive, send, 413, "payload-too-large", "The request body is too large.")
            return
        service: IdempotencyService = scope["app"].state.services.idempotency
        query = scope["query_string"].decode("latin-1")  # required in an HTTP scope, b"" when none
        request_fingerprint = fingerprint(scope["method"], scope["path"], query, body)
        outcome = await anyio.to_thread.run_sync(service.claim, principal.key_id, principal.tenant_id, key, request_fingerprint)
        if isinstance(outcome, Replay):
            _metric(scope, "replayed")
            await _send_replay(outcome.response, send)
        elif isinstance(outcome, KeyReused):
            _metric(scope, "key_reused")
            detail = (
                "This Idempotency-Key was already used for a different request (method, path, query or body "
                "differ). Use a new key for a new request; resend the exact same request to get its answer."
            )
            await send_problem(scope, receive, send, 422, "idempotency-key-reused", detail)
        elif isinstance(outcome, InFlight):
            _metric(scope, "in_flight")
            detail = (
                "A request with this Idempotency-Key is still being processed. Retry after Retry-After seconds "
                f"to get its answer (if it was lost, the key frees up within {outcome.lease_left_s:.0f} s)."
            )
            headers = {"Retry-After": retry_after_header(min(1.0, outcome.lease_left_s))}
            await send_problem(scope, receive, send, 409, "idempotency-key-in-flight", detail, headers=headers)
        else:
            if outcome.taken_over:
                _metric(scope, "taken_over")
                log.warning("idempotency_lease_taken_over", key_id=principal.key_id, record_id=outcome.record_id)
            await self._run(scope, _replaying_receive(body, receive), send, service, outcome)

    async def _run(self, scope: Scope, receive: Receive, send: Send, service: IdempotencyService, claim: Claimed) -> None:
        captured = _Captured()
        try:
            await self.app(scope, receive, captured.send)
        finally:
            # Settled even when cancelled (client gone): a finished answer is kept, anything
            # else frees the key instead of leaving it to the lease. Both happen when the
            # request's unit of work commits; if that fails, the key is freed on the spot.
            response = captured.storable()
            service.settle(claim, response)
            current_unit_of_work(scope).on_failure(partial(service.release, claim))
        _metric(scope, "stored" if response else "released")
        for message in captured.messages:
            await send(message)


async def _send_replay(response: StoredResponse, send: Send) -> None:
    headers: list[tuple[bytes, bytes]] = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
    if response.status not in (204, 304):
        headers.append((b"content-length", str(len(response.body)).encode()))
    headers.append((REPLAYED_HEADER, b"true"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


__all__ = ["IdempotencyMiddleware"]
