"""Authentication (Bearer API key) and the one guard that checks every route's access.

Each handler declares ``opt["access"]``: a tenant scope (``read``, ``deploy``, ...),
``operator`` or ``any-key``; ``public=True`` skips authentication entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from control.domain.errors import Forbidden, Throttled, Unauthenticated
from control.domain.keys import KeyService
from control.security.auth_throttle import AuthThrottle
from control.security.principal import Principal
from control.security.scopes import ANY_KEY_ACCESS, OPERATOR_ACCESS, alternatives

# /openapi: also .json. /v1/register and /v1/recover carry their credential in the body.
PUBLIC_PATHS = ["^/healthz$", "^/readyz$", "^/openapi", r"^/\.well-known/moorage-verify/", "^/v1/register$", "^/v1/recover$"]
T = TypeVar("T")


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The socket peer, or what a trusted proxy's X-Forwarded-For says (the server resolves
    that, only for MOORAGE_TRUSTED_PROXIES)."""
    client = connection.scope.get("client")
    return str(client[0]) if client else "unknown"


async def authenticate_throttled(
    connection: ASGIConnection[Any, Any, Any, Any],
    authenticate: Callable[[str | None], T],
    recent: Callable[[str], T | None] | None = None,
) -> T:
    """``authenticate(bearer token)`` off the event loop, with failed attempts counted per
    client address; a throttled address gets 429 before its credential is looked at
    (see control.security.auth_throttle). ``recent(token)``, when given, answers from
    memory on the loop (no database, no thread) or returns None."""
    throttle: AuthThrottle = connection.app.state.services.auth_throttle
    token, address = bearer_token(connection), client_address(connection)
    if token is None:  # nothing to guess with: a plain 401
        return await anyio.to_thread.run_sync(authenticate, token)
    try:
        throttle.admit(address, token)
    except Throttled:
        connection.app.state.services.metrics.rate_limited("auth-failures")
        raise
    result = recent(token) if recent is not None else None
    if result is None:
        try:
            result = await anyio.to_thread.run_sync(authenticate, token)
        except Unauthenticated:
            throttle.failed(address)
            raise
    throttle.succeeded(address, token)
    return result


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        keys: KeyService = connection.app.state.services.keys
        principal = await authenticate_throttled(connection, keys.authenticate, keys.recently_authenticated)
        return AuthenticationResult(user=principal, auth=principal.key_id)


async def access_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    # Async although it never awaits: Litestar runs a sync guard in a worker thread, a
    # thread hop on every request for a few dictionary lookups.
    access = handler.opt.get("access")
    if handler.opt.get("public") or access is None:
        return
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):  # a protected handler reached without authentication
        raise Unauthenticated("This call needs an API key: send 'Authorization: Bearer mrg_live_...'.")
    if access == ANY_KEY_ACCESS:
        return
    if access == OPERATOR_ACCESS:
        if not principal.is_operator:
            raise Forbidden("This call needs an operator key.", code="operator-required")
        return
    if principal.is_operator:
        raise Forbidden(
            "Operator keys manage the platform, not a tenant's resources. Use a key issued to the tenant.",
            code="tenant-key-required",
        )
    if not any(principal.allows(scope) for scope in alternatives(access)):
        needed = " or ".join(f"'{scope}'" for scope in alternatives(access))
        raise Forbidden(
            f"This call needs the {needed} scope; key {principal.key_id} has {sorted(principal.scopes)}.",
            code="insufficient-scope",
        )
