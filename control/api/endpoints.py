"""One way to declare a handler: who may call it, its documented errors, its thread use.

Handlers are plain sync functions (SQLite work is blocking), so they run in a worker
thread; ``opt["access"]`` is what the guard enforces and the route-table tests read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import delete, get, patch, post, put
from litestar.params import QueryParameter

from control.api.problems import problem_responses

_DECORATORS = {"GET": get, "POST": post, "PATCH": patch, "PUT": put, "DELETE": delete}
SECURITY = [{"ApiKey": []}]

Limit = QueryParameter(ge=1, le=200, description="Page size (1-200).")
Cursor = QueryParameter(description="Opaque cursor from a previous page's `next_cursor`.", required=False)


def endpoint(
    method: str,
    path: str = "/",
    *,
    access: str,
    errors: tuple[int, ...] = (),
    summary: str,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Any]:
    statuses = (400, 401, 403, 422, *errors)
    return _DECORATORS[method](
        path,
        opt={"access": str(access)},
        responses=problem_responses(*statuses),
        security=SECURITY,
        summary=summary,
        sync_to_thread=True,
        **kwargs,
    )
