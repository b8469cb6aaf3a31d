"""Exit codes agents can branch on (documented in the README)."""

from __future__ import annotations

OK = 0
FAILED = 1  # anything not listed below
USAGE = 2  # bad arguments (argparse's own code)
CONFLICT = 3  # 409: exists already, in flight, not empty
NOT_FOUND = 4  # 404
RATE_LIMITED = 5  # 429 still answered after the retry budget
UNAVAILABLE = 6  # 5xx or unreachable after the retry budget
AUTH = 7  # 401 / 403: missing, wrong or under-scoped key
INVALID = 8  # 400 / 422: the request itself is wrong; fix and retry

_BY_STATUS = {401: AUTH, 403: AUTH, 404: NOT_FOUND, 409: CONFLICT, 400: INVALID, 422: INVALID, 429: RATE_LIMITED}


def for_status(status: int) -> int:
    if status >= 500:
        return UNAVAILABLE
    return _BY_STATUS.get(status, FAILED)
