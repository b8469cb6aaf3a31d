"""Domain failures. Each has a stable ``code``; the API layer maps them to HTTP."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"
    title = "Request failed"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.extra = extra


class NotFound(DomainError):
    code = "not-found"
    title = "Not found"

    @classmethod
    def of(cls, kind: str, ref: str) -> NotFound:
        return cls(f"No {kind} '{ref}' exists for this caller. List them with GET on the collection.")


class Conflict(DomainError):
    code = "conflict"
    title = "Conflict with current state"


class Invalid(DomainError):
    """Well-formed input that breaks a rule; ``errors`` says which fields."""

    code = "validation-failed"
    title = "Invalid request"

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None, **extra: Any) -> None:
        super().__init__(detail, errors=errors or [], **extra)


class Unauthenticated(DomainError):
    code = "unauthenticated"
    title = "Authentication required"


class Throttled(DomainError):
    """Too many attempts; ``retry_after_s`` says when to try again."""

    code = "auth-throttled"
    title = "Too many failed authentications"

    def __init__(self, detail: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s


class Forbidden(DomainError):
    code = "forbidden"
    title = "Not allowed"


class TenantSuspended(Forbidden):
    code = "tenant-suspended"
    title = "Tenant suspended"


class TenantPending(Forbidden):
    code = "tenant-pending"
    title = "Tenant awaiting approval"


class DatabaseBusy(RuntimeError):
    """Another write held the database longer than the busy timeout; nothing was written."""


class LeaseLost(RuntimeError):
    """The lease a write depended on is no longer this writer's: a request's Idempotency-Key
    was taken over by a retry, or a job by another worker (or by the server that restarted
    after this one's process died). Nothing this attempt was committing is kept."""


class DatabaseInUse(RuntimeError):
    """Another live server holds the SQLite database's server lock."""


class QuotaExceeded(Conflict):
    """A request that would take a tenant past one of its quotas; nothing was made. The
    detail names the limit, the use now, and how to get more."""

    code = "quota-exceeded"
    title = "Quota exceeded"
