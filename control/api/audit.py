"""The audit log: recorded in each request's unit of work (``control.api.unit_of_work``),
read at ``/v1/audit`` (a tenant's admins) and ``/v1/operator/audit`` (operators, every tenant).

The unit of work wraps Litestar's handler, so the event has the final status of every
mutating call — 401/403 from the guard, 422 from validation, 429, 500 — and commits with
the call's own writes. Reads are recorded only when a handler asks (``mark_audited``):
revealing secret values is one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.types import HTTPScope

from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.audit import AuditService
from control.domain.records import AuditEvent
from control.http_methods import MUTATING
from control.security.scopes import OPERATOR_ACCESS, KeyScope

_AUDITED_READ = "audited_read"  # scope["state"] key: the action name of a read to record
_AUDIT_TENANT = "audit_tenant"  # scope["state"] key: the tenant a call without an API key was about

Action = QueryParameter(description="Only this action, e.g. `DELETE /v1/apps/{app}` (exact match).", required=False)
Since = QueryParameter(description="Only events at or after this time (RFC 3339; no zone means UTC).", required=False)
TenantFilter = QueryParameter(description="Only this tenant's events.", required=False)


def mark_audited(request: Request[Any, Any, Any], action_suffix: str) -> None:
    """Record this (non-mutating) request too, its action tagged with ``action_suffix``."""
    request.scope.setdefault("state", {})[_AUDITED_READ] = action_suffix


def attribute_to_tenant(request: Request[Any, Any, Any], tenant_id: str | None) -> None:
    """Record this call (made without an API key: a registration, a recovery) under
    ``tenant_id``, so that tenant's admins see it in their audit log; None: no tenant's."""
    request.scope.setdefault("state", {})[_AUDIT_TENANT] = tenant_id


def audited_tenant(scope: HTTPScope) -> str | None:
    """The tenant ``attribute_to_tenant`` named for this call, if any."""
    tenant_id = scope.get("state", {}).get(_AUDIT_TENANT)
    return tenant_id if isinstance(tenant_id, str) else None


def audited_action(scope: HTTPScope) -> str | None:
    """The action name to record for this request, or None when it is not recorded."""
    handler = scope.get("route_handler")
    if handler is not None and handler.opt.get("audited") is False:
        return None
    method = scope["method"]
    suffix = scope.get("state", {}).get(_AUDITED_READ)
    if method not in MUTATING and suffix is None:
        return None
    template = scope.get("path_template") or "<unmatched>"  # e.g. 404/405 before routing
    return f"{method} {template}{suffix or ''}"


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
    "GET",
    "/v1/operator/audit",
    access=OPERATOR_ACCESS,
    summary="Every tenant's audit log, newest first",
    tags=["audit (operator)"],
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
