"""Telling a dependency outage from a job's own failure.

Docker restarting mid-build, a socket that is gone for a moment, a breaker that is open:
none of these say anything about the tenant's app, so the job goes back to the queue
(``RetryLater``, which uses no attempt) instead of failing the deployment or database.
"""

from __future__ import annotations

from control.jobs.workers import RetryLater
from runtime.failures import CircuitOpenError, is_dependency_failure

OUTAGE_RETRY_S = 2.0  # the next try also goes through the breaker, which backs off for longer


def as_outage(exc: BaseException) -> RetryLater | None:
    """The ``RetryLater`` to raise when ``exc`` is a dependency outage, else None."""
    if isinstance(exc, CircuitOpenError):
        return RetryLater(f"dependency '{exc.name}' unavailable (circuit open)", delay_s=max(1.0, exc.retry_after))
    if is_dependency_failure(exc, idempotent=False):  # unreachable, reset or timed out; a 5xx answer is not an outage
        return RetryLater(f"lost the connection to the Docker engine ({type(exc).__name__}: {str(exc)[:200]})",
                          delay_s=OUTAGE_RETRY_S)
    return None
