"""Operator endpoints: tenants and the keys issued to them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from control.domain.keys import KeyService
from control.domain.limits import LimitsService, TenantLimits
from control.domain.records import LimitOverrides, Tenant
from control.domain.tenants import TenantService
from control.security.scopes import OPERATOR_ACCESS


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(description="DNS label; becomes part of app hostnames")]
    display_name: str = ""


class TenantOut(msgspec.Struct):
    id: str
    name: str
    display_name: str
    status: Annotated[str, msgspec.Meta(description="active | suspended | pending (self-registered, awaiting approval)")]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            display_name=tenant.display_name,
            status=tenant.status,
            created_at=tenant.created_at,
            updated_at=tenant.updated_at,
        )


class TenantList(msgspec.Struct):
    items: list[TenantOut]
    next_cursor: str | None


Quota = Annotated[
    int | None,
    msgspec.Meta(description="Requests per rate-limit window (1-1000000); null: the platform default"),
]


class LimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A full replacement of the tenant's overrides: a field left out returns to the default."""

    tenant_quota: Quota = None
    key_quota: Quota = None


class LimitsOut(msgspec.Struct):
    tenant_id: str
    window_s: Annotated[int, msgspec.Meta(description="Length of every rate-limit window, in seconds")]
    tenant_quota: Annotated[int, msgspec.Meta(description="Effective: requests per window for all the tenant's keys")]
    key_quota: Annotated[int, msgspec.Meta(description="Effective: requests per window for each of its keys")]
    overrides: LimitsIn

    @classmethod
    def of(cls, limits: TenantLimits) -> LimitsOut:
        return cls(
            tenant_id=limits.tenant_id,
            window_s=limits.defaults.window_s,
            tenant_quota=limits.tenant_quota,
            key_quota=limits.key_quota,
            overrides=LimitsIn(limits.overrides.tenant_quota, limits.overrides.key_quota),
        )


class TenantController(Controller):
    path = "/v1/tenants"
    tags = ("tenants (operator)",)

    @endpoint("POST", access=OPERATOR_ACCESS, errors=(409,), summary="Create a tenant", status_code=201)
    def create(self, tenants: NamedDependency[TenantService], data: JSONBody[TenantCreate]) -> TenantOut:
        return TenantOut.of(tenants.create(data.name, data.display_name))

    @endpoint("GET", access=OPERATOR_ACCESS, summary="List tenants")
    def list(
        self,
        tenants: NamedDependency[TenantService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
        status: Annotated[
            Literal["active", "suspended", "pending"] | None,
            QueryParameter(description="Only tenants in this state (`pending`: registered, awaiting approval)", required=False),
        ] = None,
    ) -> TenantList:
        page = tenants.list(limit=limit, cursor=cursor, status=status)
        return TenantList(items=[TenantOut.of(t) for t in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{tenant_id:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Get a tenant")
    def get(self, tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> TenantOut:
        return TenantOut.of(tenants.get(tenant_id))

    @endpoint(
        "POST", "/{tenant_id:str}/suspend", access=OPERATOR_ACCESS, errors=(404,), summary="Suspend a tenant", status_code=200
    )
    def suspend(self, tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> TenantOut:
        return TenantOut.of(tenants.set_status(tenant_id, "suspended"))

    @endpoint(
        "POST", "/{tenant_id:str}/resume", access=OPERATOR_ACCESS, errors=(404,), summary="Resume a tenant", status_code=200
    )
    def resume(self, tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> TenantOut:
        return TenantOut.of(tenants.set_status(tenant_id, "active"))

    @endpoint("DELETE", "/{tenant_id:str}", access=OPERATOR_ACCESS, errors=(404, 409), summary="Delete an empty tenant")
    def remove(self, tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> None:
        tenants.delete(tenant_id)

    @endpoint(
        "POST", "/{tenant_id:str}/keys", access=OPERATOR_ACCESS, errors=(404,), summary="Issue a key to a tenant", status_code=201
    )
    def issue_key(
        self,
        request: Request[Any, Any, Any],
        keys: NamedDependency[KeyService],
        tenant_id: FromPath[str],
        data: JSONBody[KeyCreate],
    ) -> KeyCreated:
        issued = keys.issue(request.user, tenant_id, name=data.name, scopes=data.scopes, expires_at=data.expires_at)
        return KeyCreated(**msgspec.structs.asdict(KeyOut.of(issued.key)), token=issued.token)

    @endpoint("GET", "/{tenant_id:str}/keys", access=OPERATOR_ACCESS, errors=(404,), summary="List a tenant's keys")
    def list_keys(
        self,
        tenants: NamedDependency[TenantService],
        keys: NamedDependency[KeyService],
        tenant_id: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> KeyList:
        tenants.get(tenant_id)  # 404 for an unknown tenant rather than an empty list
        page = keys.list(tenant_id, limit=limit, cursor=cursor)
        return KeyList(items=[KeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)

    @endpoint(
        "DELETE", "/{tenant_id:str}/keys/{key_id:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Revoke a tenant's key"
    )
    def revoke_key(self, keys: NamedDependency[KeyService], tenant_id: FromPath[str], key_id: FromPath[str]) -> None:
        keys.revoke(tenant_id, key_id)

    @endpoint("GET", "/{tenant_id:str}/limits", access=OPERATOR_ACCESS, errors=(404,), summary="Get a tenant's rate limits")
    def get_limits(self, limits: NamedDependency[LimitsService], tenant_id: FromPath[str]) -> LimitsOut:
        return LimitsOut.of(limits.get(tenant_id))

    @endpoint("PUT", "/{tenant_id:str}/limits", access=OPERATOR_ACCESS, errors=(404,), summary="Set a tenant's rate limits")
    def put_limits(self, limits: NamedDependency[LimitsService], tenant_id: FromPath[str], data: JSONBody[LimitsIn]) -> LimitsOut:
        """Replaces the tenant's overrides; takes effect at once in this process (others within
        `rate_limit_cache_ttl_s`)."""
        return LimitsOut.of(limits.set(tenant_id, LimitOverrides(data.tenant_quota, data.key_quota)))
