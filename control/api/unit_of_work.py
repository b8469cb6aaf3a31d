"""One request, one unit of work: the ASGI layer that opens it, settles it, and records the
request in the audit log inside it.

Every write a handler makes joins the request's unit of work (``control.domain.unit_of_work``).
When the answer starts, its status is known, and the layer settles the unit before the
client sees a byte:

- a 5xx undoes the handler's writes: a retry must find nothing half done;
- the audit row, the key's last use and the answer kept for the Idempotency-Key are
  written whatever the outcome, in the same transaction as the writes that are kept;
- if that commit fails (another process held the database too long, or a retry took the
  Idempotency-Key over meanwhile), nothing was written and the client gets that answer
  (503 or 409) instead of the handler's.

So a keyed mutating request makes two write transactions (its claim, then this one) and an
unkeyed one makes one. A streaming answer (SSE, the inference gateway) commits when it
starts; what it writes later commits on its own.

The audit row is written inside the unit, not after the answer: an event is recorded if and
only if its outcome is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import anyio
import anyio.to_thread
import structlog
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPDisconnectEvent,
    HTTPScope,
    Message,
    Receive,
    Scope,
    Send,
)

from control.api.audit import audited_action, audited_tenant
from control.api.problems import (
    DATABASE_BUSY_DETAIL,
    DATABASE_BUSY_HEADERS,
    send_problem,
)
from control.api.request_context import request_id_of
from control.domain.audit import AuditService
from control.domain.errors import DatabaseBusy, LeaseLost
from control.domain.unit_of_work import Transactions, UnitOfWork
from control.security.principal import Principal

STATE_KEY = "unit_of_work"
log = structlog.get_logger("moorage.audit")

_TAKEN_OVER = (
    "This request ran past its Idempotency-Key lease and a retry with the same key took the key over, so "
    "this attempt's changes were not kept. The retry's answer is the one that counts: resend to get it."
)

_NOT_COMMITTED = "The server failed to store this request's changes, so nothing was done. Retry with the same Idempotency-Key."


class HasStoreAndAudit(Protocol):
    @property
    def db(self) -> Transactions: ...

    @property
    def audit(self) -> AuditService: ...


def current_unit_of_work(scope: Scope) -> UnitOfWork:
    return cast("UnitOfWork", scope["state"][STATE_KEY])


class RequestUnitOfWork:
    def __init__(self, app: ASGIApp, services: Callable[[], HasStoreAndAudit]) -> None:
        self.app = app
        self.services = services  # the app's attached services, read per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        services = self.services()
        with services.db.unit_of_work() as uow:
            scope.setdefault("state", {})[STATE_KEY] = uow
            await self._serve(scope, receive, send, uow, services.audit)

    async def _serve(self, scope: HTTPScope, receive: Receive, send: Send, uow: UnitOfWork, audit: AuditService) -> None:
        settled = False
        replaced = False  # the commit failed: the handler's answer is dropped for ours

        async def send_settled(message: Message) -> None:
            nonlocal settled, replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and not settled:
                settled = True
                failure = await self._settle(scope, uow, audit, message["status"])
                if failure is not None:
                    replaced = True
                    await failure(send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_settled)
        finally:
            if not settled:  # the app ended without answering (the server answers 500)
                await self._settle(scope, uow, audit, 500)

    async def _settle(
        self, scope: HTTPScope, uow: UnitOfWork, audit: AuditService, status: int
    ) -> Callable[[Send], Awaitable[None]] | None:
        """Commit (or undo) the request's writes for an answer with ``status``; None when
        done, else what to send instead."""
        action = audited_action(scope)
        if action is None and uow.idle:  # most reads: nothing to commit, so no trip to a worker thread
            uow.commit()
            return None

        def settle() -> None:
            if status >= 500:
                uow.discard()
            if action is not None:
                _record(audit, scope, action, status)
            uow.commit()

        try:
            with anyio.CancelScope(shield=True):  # a client hanging up must not leave the unit half settled
                await anyio.to_thread.run_sync(settle)
        except Exception as exc:  # noqa: BLE001 - nothing was written; the client must not hear otherwise
            if isinstance(exc, DatabaseBusy):
                status, code, title, detail = 503, "database-busy", "Database busy", DATABASE_BUSY_DETAIL
            elif isinstance(exc, LeaseLost):
                status, code, title, detail = 409, "idempotency-key-taken-over", "Idempotency-Key taken over", _TAKEN_OVER
                log.warning("idempotency_lease_lost", path=scope["path"])
            else:
                log.error("request_not_committed", path=scope["path"], exc_info=exc)
                status, code, title, detail = 500, "internal-error", "Internal error", _NOT_COMMITTED
            if action is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_record_alone, audit, scope, action, status)
            headers = DATABASE_BUSY_HEADERS if status == 503 else None

            async def answer(send: Send) -> None:
                await send_problem(scope, _no_body, send, status, code, detail, title=title, headers=headers)

            return answer
        return None


def _record(audit: AuditService, scope: HTTPScope, action: str, status: int) -> None:
    user = scope.get("user")
    principal = user if isinstance(user, Principal) else None
    audit.record(
        tenant_id=principal.tenant_id if principal else audited_tenant(scope),
        api_key_id=principal.key_id if principal else None,
        action=action,
        target=scope["path"],  # the path only: query strings can carry anything
        request_id=request_id_of(scope),
        outcome=status,
    )


def _record_alone(audit: AuditService, scope: HTTPScope, action: str, status: int) -> None:
    """The event of a request whose unit failed to commit, in a transaction of its own."""
    try:
        _record(audit, scope, action, status)
    except Exception as exc:  # noqa: BLE001 - the answer is decided; never break it, but say so loudly
        log.error("audit_write_failed", action=action, target=scope["path"], outcome=status, error=type(exc).__name__)


async def _no_body() -> HTTPDisconnectEvent:
    return {"type": "http.disconnect"}


__all__ = ["RequestUnitOfWork", "current_unit_of_work"]
