"""One way to declare a handler: who may call it, its documented errors, its thread use.

Handlers are plain sync functions (SQLite work is blocking), so they run in a worker
thread; ``opt["access"]`` is what the guard enforces and the route-table tests read.
Every authenticated operation documents 429 and the rate-limit headers; every mutating
one documents the optional ``Idempotency-Key`` header, 409 (key in flight) and 422 (key
reused for a different request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import delete, get, patch, post, put
from litestar.datastructures import ResponseHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIType, Operation, Schema
from litestar.openapi.spec import Parameter as ParameterSpec
from litestar.params import QueryParameter

from control.api.problems import problem_responses
from control.http_methods import MUTATING

# Annotated: mypy joins the five decorator classes to a bare `type` and would call it Any.
_DECORATORS: dict[str, type[HTTPRouteHandler]] = {"GET": get, "POST": post, "PATCH": patch, "PUT": put, "DELETE": delete}
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}]

IDEMPOTENCY_KEY = ParameterSpec(
    name="Idempotency-Key",
    param_in="header",
    required=False,
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255, pattern="^[\\x20-\\x7e]+$"),
    description=(
        "Optional; makes a retry safe. The same key with the same request replays the stored answer "
        "(header `Idempotent-Replayed: true`) for 24 h; with a different request it is 422 "
        "`idempotency-key-reused`; while the first is still running it is 409 `idempotency-key-in-flight`. "
        "Scoped to the calling API key. 5xx answers are not kept, so a retry runs again."
    ),
)

RATE_LIMIT_HEADERS = [
    ResponseHeader(
        name="RateLimit-Policy",
        documentation_only=True,
        description='Quota policies (draft-ietf-httpapi-ratelimit-headers): `"key";q=120;w=60, "tenant";q=600;w=60`.',
    ),
    ResponseHeader(
        name="RateLimit",
        documentation_only=True,
        description='What is left of each policy: `"key";r=119;t=60, "tenant";r=599;t=60` (t: seconds until it refills).',
    ),
]


@dataclass
class IdempotentOperation(Operation):
    """An OpenAPI operation that also documents the Idempotency-Key request header."""

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), IDEMPOTENCY_KEY]


Limit = QueryParameter(ge=1, le=200, description="Page size (1-200).")
Cursor = QueryParameter(description="Opaque cursor from a previous page's `next_cursor`.", required=False)


def route(
    method: str,
    path: str = "/",
    *,
    access: str,
    errors: tuple[int, ...] = (),
    summary: str,
    audited: bool = True,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Declare an async handler. ``audited=False`` keeps a high-volume, non-mutating POST
    (gateway completions, node heartbeats) out of the audit log; usage rows record those."""
    mutating = method in MUTATING
    statuses = (400, 401, 403, 422, 429, *((409,) if mutating else ()), *errors)
    if mutating:
        kwargs.setdefault("operation_class", IdempotentOperation)
    return _DECORATORS[method](
        path,
        opt={"access": str(access), "audited": audited},
        responses=problem_responses(*statuses),
        response_headers=RATE_LIMIT_HEADERS,
        security=SECURITY,
        summary=summary,
        **kwargs,
    )


def endpoint(method: str, path: str = "/", **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a sync handler (blocking SQLite work): it runs in a worker thread."""
    return route(method, path, sync_to_thread=True, **kwargs)
