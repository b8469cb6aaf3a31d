"""Error classification for `runtime.resilience`: what is safe to retry, and what counts as a
dependency failure against a circuit breaker. Duck-typed (status codes, exception type names)
so it covers the docker SDK (requests/urllib3), httpx and plain sockets without importing them.
"""

from __future__ import annotations


class CircuitOpenError(RuntimeError):
    """Raised instead of calling a dependency whose breaker is open (maps to 503 + Retry-After)."""

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        super().__init__(f"circuit '{name}' is open; retry after {self.retry_after:.1f}s")


# --- error classification -------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes/contexts and exception args (requests/docker nest them)."""
    seen: list[BaseException] = []
    stack = [exc]
    while stack and len(seen) < 20:
        e = stack.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        reason = getattr(e, "reason", None)  # urllib3 MaxRetryError.reason
        if isinstance(reason, BaseException):
            stack.append(reason)
    return seen


def _type_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def status_code_of(exc: BaseException) -> int | None:
    """HTTP status of an error that carries one (docker APIError, httpx.HTTPStatusError)."""
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_connect_failure(exc: BaseException) -> bool:
    """The request never reached the dependency (refused, no socket, DNS): safe for any call."""
    names = set().union(*(_type_names(e) for e in _chain(exc)))
    if names & {"ConnectionRefusedError", "NewConnectionError", "ConnectError", "ConnectTimeout", "NameResolutionError"}:
        return True
    # A missing unix socket (dockerd down) surfaces as FileNotFoundError inside a transport error.
    return "FileNotFoundError" in names and bool(names & {"ConnectionError", "ProtocolError"})


def is_transport_failure(exc: BaseException) -> bool:
    """Connection reset/aborted or timed out: the dependency may or may not have acted."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = set().union(*(_type_names(e) for e in _chain(exc)))
    return bool(
        names
        & {
            "TransportError",
            "ProtocolError",
            "ReadTimeout",
            "Timeout",
            "ConnectionError",
            "ChunkedEncodingError",
            "RemoteDisconnected",
        }
    )


RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


def safe_to_retry(exc: BaseException, idempotent: bool) -> bool:
    """Retry only what cannot duplicate an effect.

    - connect failures: always (nothing was sent);
    - resets/timeouts and 500/502/503/504: only for idempotent calls (reads, full replaces);
    - 4xx, `CircuitOpenError`, anything else: never.
    """
    if isinstance(exc, CircuitOpenError):
        return False
    if is_connect_failure(exc):
        return True
    status = status_code_of(exc)
    if status is not None:
        return idempotent and status in RETRYABLE_STATUS
    return idempotent and is_transport_failure(exc)


def is_dependency_failure(exc: BaseException, idempotent: bool) -> bool:
    """What counts against a breaker: the dependency is unreachable or broken. A 4xx means it
    answered, so it is healthy. A 5xx on a mutating call may be the workload's fault (a bad
    image), so only 5xx on idempotent calls count: one tenant cannot trip it for all."""
    if isinstance(exc, CircuitOpenError):
        return False
    if is_connect_failure(exc):
        return True
    status = status_code_of(exc)
    if status is not None:
        return idempotent and status >= 500
    return is_transport_failure(exc)
