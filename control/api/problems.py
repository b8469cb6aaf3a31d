"""RFC 9457 problem details for every error the API can answer with.

``type`` is a stable relative URI (``/problems/<code>``) and ``code`` the same slug, so
agents can branch on either; ``detail`` says what to do next; ``request_id`` ties the
answer to the server's log lines. Stack traces never leave the server.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import Receive, Scope, Send

from control.api.request_context import request_id_of
from control.domain.errors import (
    Conflict,
    DatabaseBusy,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    QuotaExceeded,
    Throttled,
    Unauthenticated,
)
from runtime.failures import is_connect_failure
from runtime.resilience import CircuitOpenError

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("moorage.api")


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str = ""
    request_id: str = ""
    errors: list[FieldError] = []


_STATUS_OF: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    # Every quota (apps, replicas, CPU, memory, build minutes, volumes, databases, schedules,
    # domains) answers with this one status, so agents branch on it the same way everywhere:
    # 422, the request is well formed but over a limit (an operator can raise it), not a
    # conflict with something another request did.
    (QuotaExceeded, 422),
    (Conflict, 409),
    (Invalid, 422),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (Throttled, 429),
]

_CODE_OF_STATUS = {
    400: "malformed-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    431: "request-header-fields-too-large",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}

_DETAIL_OF_STATUS = {
    404: "No such endpoint. The API is described at GET /openapi.json.",
    405: "This endpoint does not accept that method; see the Allow header.",
    500: "The server failed unexpectedly. Retry later; if it persists, report the request_id.",
}


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    problem = Problem(
        type=f"/problems/{code}",
        title=title or HTTPStatus(status).phrase,
        status=status,
        code=code,
        detail=detail,
        instance=request.url.path,
        request_id=request_id_of(request.scope),
        errors=[FieldError(**e) for e in errors or []],
    )
    return Response(problem, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def domain_error_handler(request: Request[Any, Any, Any], exc: DomainError) -> Response[Problem]:
    status = next((s for kind, s in _STATUS_OF if isinstance(exc, kind)), 400)
    errors = exc.extra.get("errors")
    headers = {"WWW-Authenticate": 'Bearer realm="moorage"'} if status == 401 else None
    if isinstance(exc, Throttled):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return problem_response(request, status, exc.code, exc.detail, title=exc.title, errors=errors, headers=headers)


def validation_error_handler(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    # Litestar reports body/query mismatches here. Undecodable JSON has no field to
    # point at (400); a decodable body of the wrong shape names its fields (422).
    items = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        {"field": str(item.get("key") or item.get("source") or "body"), "message": str(item.get("message", ""))}
        for item in items
        if isinstance(item, dict)
    ]
    malformed = not errors or any("malformed" in e["message"].lower() for e in errors)
    if malformed:
        detail = "The request body is not valid JSON. Send a JSON object matching the schema in GET /openapi.json."
        return problem_response(request, 400, "malformed-request", detail, errors=errors)
    fields = ", ".join(e["field"] for e in errors)
    detail = f"The request does not match the schema (fields: {fields}). Fix them and retry."
    return problem_response(request, 422, "validation-failed", detail, errors=errors)


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    code = _CODE_OF_STATUS.get(status, "error")
    detail = _DETAIL_OF_STATUS.get(status) or str(exc.detail)
    return problem_response(request, status, code, detail, headers=dict(exc.headers or {}))


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up and at least 1: a client that waits that long is not early."""
    return str(max(1, math.ceil(seconds)))


def circuit_open_handler(request: Request[Any, Any, Any], exc: CircuitOpenError) -> Response[Problem]:
    detail = (
        f"The dependency '{exc.name}' is unavailable (its circuit breaker is open), so the request was not "
        "carried out. Retry after the Retry-After seconds; GET /readyz lists each dependency's state."
    )
    headers = {"Retry-After": retry_after_header(exc.retry_after)}
    return problem_response(request, 503, "dependency-unavailable", detail, title="Dependency unavailable", headers=headers)


async def send_problem(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    title: str | None = None,
) -> None:
    """Answer with a problem straight from an ASGI middleware (no exception round trip, so
    the middlewares around it still see and decorate the response)."""
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    response = problem_response(request, status, code, detail, headers=headers, title=title)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


UNREACHABLE_RETRY_S = 5


def unhandled_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if is_connect_failure(exc):  # a dependency is down and its breaker has not opened (yet)
        log.warning("dependency_unreachable", path=request.url.path, error=type(exc).__name__)
        detail = (
            "A dependency this request needs (the Docker engine, Traefik or an inference node) is not accepting "
            "connections, so the request could not be completed. Retry after the Retry-After seconds with the same "
            "Idempotency-Key; GET /readyz lists each dependency's state."
        )
        return problem_response(
            request,
            503,
            "dependency-unavailable",
            detail,
            title="Dependency unavailable",
            headers={"Retry-After": str(UNREACHABLE_RETRY_S)},
        )
    log.error("unhandled_exception", path=request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal-error", _DETAIL_OF_STATUS[500])


DATABASE_BUSY_DETAIL = (
    "The control plane's database was held by other writes for too long, so nothing was done. Retry after "
    "the Retry-After seconds with the same Idempotency-Key."
)
DATABASE_BUSY_HEADERS = {"Retry-After": "1"}


def database_busy_handler(request: Request[Any, Any, Any], exc: DatabaseBusy) -> Response[Problem]:
    log.warning("database_busy", path=request.url.path)
    return problem_response(
        request, 503, "database-busy", DATABASE_BUSY_DETAIL, title="Database busy", headers=DATABASE_BUSY_HEADERS
    )


EXCEPTION_HANDLERS = {
    DomainError: domain_error_handler,
    DatabaseBusy: database_busy_handler,
    CircuitOpenError: circuit_open_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    Exception: unhandled_error_handler,
}

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid, revoked or expired API key",
    403: "Key lacks the scope, or the tenant is suspended",
    404: "Not found (another tenant's resources are always 404)",
    409: "Conflicts with current state, or the same Idempotency-Key is still in flight (`Retry-After`)",
    422: "Well-formed but invalid input (`errors` names the fields), or an Idempotency-Key reused for a different request",
    429: (
        "Rate limited (`rate-limited`), or too many failed authentications from this address (`auth-throttled`: "
        "credentials from it are not checked for now); retry after `Retry-After` seconds"
    ),
    500: "Unexpected server error",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries documenting the problem+json answers a handler can give."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=_DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            generate_examples=False,
        )
        for status in sorted({*statuses, 500})
    }


__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "MediaType",
    "Problem",
    "problem_response",
    "problem_responses",
    "retry_after_header",
    "send_problem",
]
