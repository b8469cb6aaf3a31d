"""Apps: create, list, read, change and delete a tenant's apps (by id or by name)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.apps import AppService
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.store.records import App

Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="Port the app listens on inside its container")]


class AppCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(description="DNS label, unique in the tenant; immutable")]
    description: str = ""
    port: Port = 8080
    health_check_path: str = "/"
    builder: Annotated[str, msgspec.Meta(description="auto | dockerfile | nixpacks")] = "auto"


class AppPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out (or null) stay as they are; the name cannot change."""

    description: str | None = None
    port: Port | None = None
    health_check_path: str | None = None
    builder: str | None = None


class AppOut(msgspec.Struct):
    id: str
    name: str
    description: str
    port: int
    health_check_path: str
    builder: str
    created_at: datetime
    updated_at: datetime
    url: Annotated[str, msgspec.Meta(description="where the app answers once deployed: http://<app>.<tenant>.<base-domain>")] = ""

    @classmethod
    def of(cls, app: App, apps_domain: str = "") -> AppOut:
        return cls(
            id=app.id,
            name=app.name,
            description=app.description,
            port=app.port,
            health_check_path=app.health_check_path,
            builder=app.builder,
            created_at=app.created_at,
            updated_at=app.updated_at,
            url=f"http://{app.name}.{apps_domain}" if apps_domain else "",
        )


class AppList(msgspec.Struct):
    items: list[AppOut]
    next_cursor: str | None


def _tenant(request: Request[Any, Principal, Any]) -> str:
    tenant_id = request.user.tenant_id
    assert tenant_id is not None  # the access guard admits only tenant keys here
    return tenant_id


def _apps_domain(request: Request[Any, Principal, Any]) -> str:
    """``<tenant>.<base-domain>``: the suffix of every app's hostname (as the router writes it)."""
    services = request.app.state.services
    return f"{services.tenants.get(_tenant(request)).name}.{services.settings.base_domain}"


class AppController(Controller):
    path = "/v1/apps"
    tags = ["apps"]

    @endpoint("POST", access=KeyScope.DEPLOY, errors=(409,), summary="Create an app", status_code=201)
    def create(self, request: Request[Any, Principal, Any], apps: NamedDependency[AppService], data: JSONBody[AppCreate]) -> AppOut:
        fields = msgspec.structs.asdict(data)
        return AppOut.of(apps.create(_tenant(request), fields.pop("name"), **fields), _apps_domain(request))

    @endpoint("GET", access=KeyScope.READ, summary="List apps")
    def list(
        self,
        request: Request[Any, Principal, Any],
        apps: NamedDependency[AppService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> AppList:
        page = apps.list(_tenant(request), limit=limit, cursor=cursor)
        domain = _apps_domain(request)
        return AppList(items=[AppOut.of(a, domain) for a in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{app:str}", access=KeyScope.READ, errors=(404,), summary="Get an app by id or name")
    def get(self, request: Request[Any, Principal, Any], apps: NamedDependency[AppService], app: FromPath[str]) -> AppOut:
        return AppOut.of(apps.get(_tenant(request), app), _apps_domain(request))

    @endpoint("PATCH", "/{app:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Change an app's settings")
    def update(self, request: Request[Any, Principal, Any], apps: NamedDependency[AppService], app: FromPath[str], data: JSONBody[AppPatch]) -> AppOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        return AppOut.of(apps.update(_tenant(request), app, **changes), _apps_domain(request))

    @endpoint("DELETE", "/{app:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Delete an app")
    def remove(self, request: Request[Any, Principal, Any], apps: NamedDependency[AppService], app: FromPath[str]) -> None:
        apps.delete(_tenant(request), app)
