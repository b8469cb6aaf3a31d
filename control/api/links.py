"""An app's links to managed databases (``/v1/apps/{app}/links``).

A link puts the database's in-network URL into the app's environment as ``env_name``
(default ``DATABASE_URL`` for Postgres, ``REDIS_URL`` for Redis) at the app's NEXT release;
removing one drops the variable at the next release. The URL is resolved at container start
and never stored or listed. A name already used by an env var or another link is 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import endpoint
from control.domain.links import LinkService
from control.domain.records import Link
from control.security.scopes import KeyScope


class LinkCreate(msgspec.Struct, forbid_unknown_fields=True):
    database: Annotated[str, msgspec.Meta(description="The database's id or name (same tenant)")]
    env_name: Annotated[str | None, msgspec.Meta(description="Default DATABASE_URL (postgres) or REDIS_URL (redis)")] = None


class LinkOut(msgspec.Struct):
    id: str
    app_id: str
    database_id: str
    database_name: str
    engine: str
    env_name: str
    created_at: datetime
    applies: Annotated[str, msgspec.Meta(description="Links change the environment at the next release")] = "next-release"

    @classmethod
    def of(cls, link: Link) -> LinkOut:
        return cls(link.id, link.app_id, link.database_id, link.database_name, link.engine, link.env_name, link.created_at)


class LinkList(msgspec.Struct):
    items: list[LinkOut]


class LinkController(Controller):
    path = "/v1/apps/{app:str}/links"
    tags = ("databases",)

    @endpoint(
        "POST",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=201,
        summary="Link a database to an app (from its next release)",
    )
    def create(
        self,
        caller_tenant: NamedDependency[str],
        links: NamedDependency[LinkService],
        app: FromPath[str],
        data: JSONBody[LinkCreate],
    ) -> LinkOut:
        return LinkOut.of(links.create(caller_tenant, app, data.database, data.env_name))

    @endpoint("GET", access=KeyScope.READ, errors=(404,), summary="List an app's database links (never URLs)")
    def list(self, caller_tenant: NamedDependency[str], links: NamedDependency[LinkService], app: FromPath[str]) -> LinkList:
        return LinkList([LinkOut.of(link) for link in links.list(caller_tenant, app)])

    @endpoint(
        "DELETE", "/{link:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Remove a link (from the app's next release)"
    )
    def remove(
        self, caller_tenant: NamedDependency[str], links: NamedDependency[LinkService], app: FromPath[str], link: FromPath[str]
    ) -> None:
        links.delete(caller_tenant, app, link)
