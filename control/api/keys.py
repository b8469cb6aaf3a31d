"""Tenant self-service for keys (``admin`` scope) and ``whoami`` for any key."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from control.domain.keys import KeyService
from control.security.principal import Principal
from control.security.scopes import ANY_KEY_ACCESS, KeyScope


class WhoAmI(msgspec.Struct):
    key_id: str
    tenant_id: FromPath[str] | None
    scopes: list[str]
    operator: bool


class KeyController(Controller):
    path = "/v1/keys"
    tags = ("keys",)

    @endpoint("POST", access=KeyScope.ADMIN, summary="Issue a key for your tenant", status_code=201)
    def issue(
        self, request: Request[Any, Principal, Any], keys: NamedDependency[KeyService], data: JSONBody[KeyCreate]
    ) -> KeyCreated:
        principal = request.user
        issued = keys.issue(principal, principal.tenant_id, name=data.name, scopes=data.scopes, expires_at=data.expires_at)
        return KeyCreated(**msgspec.structs.asdict(KeyOut.of(issued.key)), token=issued.token)

    @endpoint("GET", access=KeyScope.ADMIN, summary="List your tenant's keys")
    def list(
        self,
        request: Request[Any, Principal, Any],
        keys: NamedDependency[KeyService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> KeyList:
        page = keys.list(request.user.tenant_id, limit=limit, cursor=cursor)
        return KeyList(items=[KeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{key_id:str}", access=KeyScope.ADMIN, errors=(404,), summary="Get one of your tenant's keys")
    def get(self, request: Request[Any, Principal, Any], keys: NamedDependency[KeyService], key_id: FromPath[str]) -> KeyOut:
        return KeyOut.of(keys.get(request.user.tenant_id, key_id))

    @endpoint("DELETE", "/{key_id:str}", access=KeyScope.ADMIN, errors=(404,), summary="Revoke one of your tenant's keys")
    def revoke(self, request: Request[Any, Principal, Any], keys: NamedDependency[KeyService], key_id: FromPath[str]) -> None:
        keys.revoke(request.user.tenant_id, key_id)


@endpoint("GET", "/v1/whoami", access=ANY_KEY_ACCESS, summary="The calling key, its tenant and scopes", tags=["keys"])
def whoami(request: Request[Any, Principal, Any]) -> WhoAmI:
    principal = request.user
    return WhoAmI(
        key_id=principal.key_id,
        tenant_id=principal.tenant_id,
        scopes=sorted(principal.scopes),
        operator=principal.is_operator,
    )
