"""Apps: create, list, read, change and delete a tenant's apps (by id or by name)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio.to_thread
import msgspec
from litestar import Controller
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.apps import AppService
from control.domain.records import App
from control.domain.tenants import TenantService
from control.security.scopes import KeyScope
from control.settings import Settings

Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="Port the app listens on inside its container")]
Replicas = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=100,
        description="containers the app runs in, balanced by Traefik (at most MOORAGE_MAX_REPLICAS); a change applies within seconds",
    ),
]
Purge = QueryParameter(
    description="Also delete the app's volumes and their data (an app with volumes is 409 `app-has-volumes` without it).",
    required=False,
)


class AppCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(description="DNS label, unique in the tenant; immutable")]
    description: str = ""
    port: Port = 8080
    health_check_path: str = "/"
    builder: Annotated[str, msgspec.Meta(description="auto | dockerfile | nixpacks")] = "auto"
    replicas: Replicas = 1


class AppPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out (or null) stay as they are; the name cannot change."""

    description: str | None = None
    port: Port | None = None
    health_check_path: str | None = None
    builder: str | None = None
    replicas: Replicas | None = None


class AppOut(msgspec.Struct):
    id: str
    name: str
    description: str
    port: int
    health_check_path: str
    builder: str
    replicas: int
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
            replicas=app.replicas,
            created_at=app.created_at,
            updated_at=app.updated_at,
            url=f"http://{app.name}.{apps_domain}" if apps_domain else "",
        )


class AppList(msgspec.Struct):
    items: list[AppOut]
    next_cursor: str | None


async def apps_domain(
    caller_tenant: NamedDependency[str], tenants: NamedDependency[TenantService], settings: NamedDependency[Settings]
) -> str:
    """``<tenant>.<base-domain>``: the suffix of every app's hostname (as the router writes it).
    Tenant names never change, so after the first read it costs no database and no thread."""
    name = tenants.known_name(caller_tenant) or await anyio.to_thread.run_sync(tenants.name, caller_tenant)
    return f"{name}.{settings.base_domain}"


class AppController(Controller):
    path = "/v1/apps"
    tags = ("apps",)
    dependencies = {"apps_domain": Provide(apps_domain)}  # noqa: RUF012 (Litestar's own attribute)

    @endpoint(
        "POST",
        access=KeyScope.DEPLOY,
        errors=(409,),
        summary="Create an app",
        description="409 `name-taken`; 422 `quota-exceeded` past the tenant's `max_apps` (nothing is created).",
        status_code=201,
    )
    def create(
        self,
        caller_tenant: NamedDependency[str],
        apps_domain: NamedDependency[str],
        apps: NamedDependency[AppService],
        data: JSONBody[AppCreate],
    ) -> AppOut:
        fields = msgspec.structs.asdict(data)
        return AppOut.of(apps.create(caller_tenant, fields.pop("name"), **fields), apps_domain)

    @endpoint("GET", access=KeyScope.READ, summary="List apps")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        apps_domain: NamedDependency[str],
        apps: NamedDependency[AppService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> AppList:
        page = apps.list(caller_tenant, limit=limit, cursor=cursor)
        return AppList(items=[AppOut.of(a, apps_domain) for a in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{app:str}", access=KeyScope.READ, errors=(404,), summary="Get an app by id or name")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        apps_domain: NamedDependency[str],
        apps: NamedDependency[AppService],
        app: FromPath[str],
    ) -> AppOut:
        return AppOut.of(apps.get(caller_tenant, app), apps_domain)

    @endpoint(
        "PATCH",
        "/{app:str}",
        access=KeyScope.DEPLOY,
        errors=(404, 409),
        summary="Change an app's settings",
        description="More `replicas` for an app that runs must fit the tenant's `max_replicas`, `max_cpu` and "
        "`max_memory_mb` (each container counts at its Docker limits): else 422 `quota-exceeded` naming the limit "
        "and the use, and nothing changes. 409 `replicas-with-volume` for more than 1 replica of an app with volumes.",
    )
    def update(
        self,
        caller_tenant: NamedDependency[str],
        apps_domain: NamedDependency[str],
        apps: NamedDependency[AppService],
        app: FromPath[str],
        data: JSONBody[AppPatch],
    ) -> AppOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        return AppOut.of(apps.update(caller_tenant, app, **changes), apps_domain)

    @endpoint("DELETE", "/{app:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Delete an app (with volumes: ?purge=true)")
    def remove(
        self,
        caller_tenant: NamedDependency[str],
        apps: NamedDependency[AppService],
        app: FromPath[str],
        purge: Annotated[bool, Purge] = False,
    ) -> None:
        apps.delete(caller_tenant, app, purge=purge)
