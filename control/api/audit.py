"""The audit log: recorded by one ASGI layer, read at ``/v1/audit`` (a tenant's admins)
and ``/v1/operator/audit`` (operators, every tenant).

``AuditTrail`` wraps Litestar's handler, so it sees the final status of every mutating
call — 401/403 from the guard, 422 from validation, 429, 500 — after the response was
sent. Writing the event can fail (a locked or broken database); that is logged and the
caller's response, already sent, is unaffected. Reads are recorded only when a handler
asks (``mark_audited``): revealing secret values is one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

import anyio
import anyio.to_thread
import msgspec
import structlog
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.request_context import request_id_of
from control.domain.audit import AuditService
from control.http_methods import MUTATING
from control.security.principal import Principal
from control.security.scopes import OPERATOR_ACCESS, KeyScope
from control.store.repositories.audit import AuditEvent

_AUDITED_READ = "audited_read"  # scope["state"] key: the action name of a read to record
log = structlog.get_logger("moorage.audit")

Action = QueryParameter(description="Only this action, e.g. `DELETE /v1/apps/{app}` (exact match).", required=False)
Since = QueryParameter(description="Only events at or after this time (RFC 3339; no zone means UTC).", required=False)
TenantFilter = QueryParameter(description="Only this tenant's events.", required=False)


def mark_audited(request: Request[Any, Any, Any], action_suffix: str) -> None:
    """Record this (non-mutating) request too, its action tagged with ``action_suffix``."""
    request.scope.setdefault("state", {})[_AUDITED_READ] = action_suffix  # type: ignore[typeddict-item]


def _action(scope: HTTPScope) -> str | None:
    handler = scope.get("route_handler")
    if handler is not None and handler.opt.get("audited") is False:
        return None
    method = scope["method"]
    suffix = scope.get("state", {}).get(_AUDITED_READ)
    if method not in MUTATING and suffix is None:
        return None
    template = scope.get("path_template") or "<unmatched>"  # e.g. 404/405 before routing
    return f"{method} {template}{suffix or ''}"


class AuditTrail:
    def __init__(self, app: ASGIApp, audit: AuditService) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: the app failed before answering

        async def send_watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        finally:
            action = _action(cast("HTTPScope", scope))
            if action is not None:
                with anyio.CancelScope(shield=True):  # a client hanging up must not erase the trail
                    await self._record(scope, action, status)

    async def _record(self, scope: Scope, action: str, status: int) -> None:
        user = scope.get("user")
        principal = user if isinstance(user, Principal) else None
        target = scope["path"]  # the path only: query strings can carry anything
        tenant_id = principal.tenant_id if principal else None
        key_id = principal.key_id if principal else None
        request_id = request_id_of(scope)

        def write() -> None:
            self.audit.record(
                tenant_id=tenant_id, api_key_id=key_id, action=action, target=target, request_id=request_id, outcome=status
            )

        try:
            await anyio.to_thread.run_sync(write)
        except Exception as exc:  # the response is already sent; never break it, but say so loudly
            log.error("audit_write_failed", action=action, target=target, outcome=status, error=type(exc).__name__)


class AuditEventOut(msgspec.Struct):
    id: str
    tenant_id: str | None
    api_key_id: str | None
    action: str
    target: str
    request_id: str
    outcome: Annotated[int, msgspec.Meta(description="HTTP status of the call")]
    created_at: datetime

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(**{f: getattr(event, f) for f in cls.__struct_fields__})


class AuditList(msgspec.Struct):
    items: list[AuditEventOut]
    next_cursor: str | None


def _page(audit: AuditService, tenant_id: str | None, **filters: Any) -> AuditList:
    page = audit.list(tenant_id=tenant_id, **filters)
    return AuditList(items=[AuditEventOut.of(e) for e in page.items], next_cursor=page.next_cursor)


@endpoint("GET", "/v1/audit", access=KeyScope.ADMIN, summary="Your tenant's audit log, newest first", tags=["audit"])
def tenant_audit(
    caller_tenant: NamedDependency[str],
    audit: NamedDependency[AuditService],
    limit: Annotated[int, Limit] = 50,
    cursor: Annotated[str | None, Cursor] = None,
    action: Annotated[str | None, Action] = None,
    since: Annotated[datetime | None, Since] = None,
) -> AuditList:
    # require_tenant: a None here would mean "every tenant", so never let one through.
    return _page(audit, caller_tenant, action=action, since=since, limit=limit, cursor=cursor)


@endpoint(
    "GET", "/v1/operator/audit", access=OPERATOR_ACCESS, summary="Every tenant's audit log, newest first", tags=["audit (operator)"]
)
def operator_audit(
    audit: NamedDependency[AuditService],
    limit: Annotated[int, Limit] = 50,
    cursor: Annotated[str | None, Cursor] = None,
    action: Annotated[str | None, Action] = None,
    since: Annotated[datetime | None, Since] = None,
    tenant_id: Annotated[str | None, TenantFilter] = None,
) -> AuditList:
    return _page(audit, tenant_id, action=action, since=since, limit=limit, cursor=cursor)
