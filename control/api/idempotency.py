"""Idempotency-Key on POST/PUT/PATCH/DELETE: HTTP glue around ``domain.idempotency``.

Sits after authentication (the key is scoped to ``scope["user"]``) and after the rate
limiter. A public route that declares ``opt["anonymous_idempotency"]`` (self-registration,
key recovery: no API key, the credential is in the body) scopes keys to the route itself;
a replay still needs the very same body, credential included, so only whoever sent it can
get its answer again. It reads the whole request body first (to fingerprint it, then feeds it to the app
again): up to the route's own body limit (for source uploads, ``MOORAGE_MAX_UPLOAD_BYTES``),
held in memory while small and spooled to disk past 1 MiB (``control.api.spooled_body``),
so a keyed 100 MiB upload costs the process no more memory than a small one. It buffers
the response so that it is stored *before* the client sees it: the answer is
kept in the request's unit of work, which commits it together with the handler's writes
(``control.api.unit_of_work``), so a client that got an answer can always get the same
answer again, and an answer that was not kept means nothing was done. Mutating endpoints
do not stream (long operations answer 202 and are polled), so buffering costs little.

Kept for replay: status, body and the headers in ``KEPT_HEADERS``; everything else
(request id, rate-limit headers) is fresh on every answer.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import anyio
import anyio.to_thread
import structlog
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPScope,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from control.api.problems import retry_after_header, send_problem
from control.api.spooled_body import SpooledBody
from control.api.unit_of_work import current_unit_of_work
from control.domain.idempotency import (
    KEY_RULE,
    Claimed,
    IdempotencyService,
    InFlight,
    KeyReused,
    Replay,
    fingerprint_chunks,
    parse_key,
)
from control.domain.records import StoredResponse
from control.http_methods import MUTATING
from control.security.principal import Principal

HEADER = b"idempotency-key"
REPLAYED_HEADER = b"idempotent-replayed"
KEPT_HEADERS = frozenset({b"content-type", b"location", b"content-location", b"etag", b"last-modified", b"link"})
MAX_BODY_BYTES = 10_000_000  # Litestar's own default request limit, for a request no route was found for
SPOOL_DIR = "spool"  # under the data directory
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


def body_limit(scope: Scope, upload_limit: int) -> int:
    """The most body this request may have: its route's own limit, and for routes that read
    their body as a stream with no Litestar limit (source uploads), the upload limit."""
    handler: Any = scope.get("route_handler")
    limit = handler.resolve_request_max_body_size() if handler is not None else MAX_BODY_BYTES
    return upload_limit if limit is None else int(limit)


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _read_body(receive: Receive, body: SpooledBody, limit: int) -> bool:
    """Read the whole request body into ``body``; False when it exceeds ``limit``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        event = cast("HTTPRequestEvent", message)
        chunk = event.get("body", b"")
        if body.size + len(chunk) > limit:
            return False
        await body.append(chunk)
        if not event.get("more_body", False):
            await body.finish()
            return True


def _replaying_receive(body: SpooledBody, receive: Receive) -> Receive:
    done = False

    async def replay() -> ReceiveMessage:
        nonlocal done
        if not done:
            piece, more = await body.read()
            done = not more
            event: HTTPRequestEvent = {"type": "http.request", "body": piece, "more_body": more}
            return event
        return await receive()  # after the body: wait for a disconnect, as the server would

    return replay


async def _fingerprint(scope: HTTPScope, body: SpooledBody) -> str:
    query = scope["query_string"].decode("latin-1")  # required in an HTTP scope, b"" when none
    method, path = scope["method"], scope["path"]
    if not body.on_disk:
        return fingerprint_chunks(method, path, query, body.size, body.pieces())
    return await anyio.to_thread.run_sync(lambda: fingerprint_chunks(method, path, query, body.size, body.pieces()))


def _too_large(limit: int) -> str:
    return f"The request body is too large: at most {limit} bytes are accepted here."


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
        owner = _owner(scope) if scope["type"] == ScopeType.HTTP and scope["method"] in MUTATING else None
        if owner is None:
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
        services = scope["app"].state.services
        limit = body_limit(scope, services.settings.max_upload_bytes)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:  # refused before a byte is spooled
            await send_problem(scope, receive, send, 413, "payload-too-large", _too_large(limit))
            return
        body = SpooledBody(services.settings.data_dir / SPOOL_DIR)
        try:
            await self._handle(scope, receive, send, owner, key, body, limit)
        finally:
            body.close()

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, owner: tuple[str, str | None], key: str, body: SpooledBody, limit: int
    ) -> None:
        try:
            complete = await _read_body(receive, body, limit)
        except _ClientGone:
            return  # nothing claimed yet, nobody to answer
        if not complete:
            await send_problem(scope, receive, send, 413, "payload-too-large", _too_large(limit))
            return
        service: IdempotencyService = scope["app"].state.services.idempotency
        request_fingerprint = await _fingerprint(cast("HTTPScope", scope), body)
        outcome = await anyio.to_thread.run_sync(service.claim, owner[0], owner[1], key, request_fingerprint)
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
                log.warning("idempotency_lease_taken_over", key_id=owner[0], record_id=outcome.record_id)
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


def _owner(scope: Scope) -> tuple[str, str | None] | None:
    """Whose keys these are: (the API key's id, its tenant), or (the route, None) for a public
    route with anonymous idempotency; None: Idempotency-Key does not apply."""
    principal = scope.get("user")
    if isinstance(principal, Principal):
        return principal.key_id, principal.tenant_id
    handler: Any = scope.get("route_handler")
    if handler is not None and handler.opt.get("anonymous_idempotency"):
        return f"public:{scope['path']}", None
    return None


async def _send_replay(response: StoredResponse, send: Send) -> None:
    headers: list[tuple[bytes, bytes]] = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
    if response.status not in (204, 304):
        headers.append((b"content-length", str(len(response.body)).encode()))
    headers.append((REPLAYED_HEADER, b"true"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


__all__ = ["IdempotencyMiddleware"]
