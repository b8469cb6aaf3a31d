"""Managed databases (``/v1/databases``): Postgres or Redis on the tenant's network.

``POST`` answers 202 with the database (``provisioning``, then ``available`` or ``failed``
with a ``reason``); poll ``GET /v1/databases/{db}``. Credentials never appear in any
listing: ``GET .../connection`` shows where to connect with the password masked, and
``?reveal=true`` (``admin`` scope, audited) gives the URL itself. Apps get the URL through
links (``/v1/apps/{app}/links``), never by copying it into env vars.

``PATCH`` changes how it is backed up: ``backup_schedule`` (cron syntax in UTC, at most as
often as ``MOORAGE_DATABASE_BACKUP_MIN_INTERVAL_S``; ``null`` switches it off) and
``backup_retention`` (the newest N backups kept; ``null``: the platform default).

``DELETE`` stops and removes the container; the data volume is kept for the grace period
(``MOORAGE_DATABASE_VOLUME_GRACE_S``) unless ``?purge=true``, which removes the volume and
every backup now. A linked database answers 409 unless ``?force=true``, which removes its
links as well (the apps keep the old URL until their next release).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control.api.audit import mark_audited
from control.api.endpoints import Cursor, Limit, endpoint
from control.api.env import secret_unreadable_handler
from control.domain.databases import (
    CredentialsUnreadable,
    DatabaseLimits,
    DatabaseService,
)
from control.domain.errors import Forbidden
from control.domain.records import Database, DatabaseOverrides
from control.security.principal import Principal
from control.security.scopes import OPERATOR_ACCESS, KeyScope
from runtime.databases.engines import engine_facts
from runtime.databases.provision import hostname_for
from runtime.databases.redaction import redact_url

Reveal = QueryParameter(
    description="Include the URL with its password. Needs the `admin` scope (403 otherwise); audited.", required=False
)
Purge = QueryParameter(
    description="Remove the data volume and every backup now instead of after the grace period.", required=False
)
Force = QueryParameter(
    description="Also remove the database's links to apps (otherwise a linked database is 409).", required=False
)


BackupSchedule = msgspec.Meta(
    description=(
        "Back the database up on this schedule: cron syntax in UTC (5 fields, 6 with a leading seconds field, or "
        "@daily/@hourly/...), at most as often as the platform allows (MOORAGE_DATABASE_BACKUP_MIN_INTERVAL_S, default "
        "300 s). Each firing is a backup (trigger 'schedule'); a firing while the previous backup still runs is skipped; "
        "retention then keeps the newest N."
    ),
    examples=["0 3 * * *"],
)


class DatabaseCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[
        str, msgspec.Meta(description="DNS label (at most 60 characters), unique in the tenant; apps reach it as db-<name>")
    ]
    engine: Annotated[str, msgspec.Meta(description="postgres | redis")]
    memory_mb: Annotated[
        int | None, msgspec.Meta(description="Container memory limit (MiB); default 512 for postgres, 256 for redis")
    ] = None
    backup_retention: Annotated[
        int | None, msgspec.Meta(description="Newest backups kept (1-100); default MOORAGE_DATABASE_BACKUP_RETENTION")
    ] = None
    backup_schedule: Annotated[str | None, BackupSchedule] = None


class DatabasePatch(msgspec.Struct, forbid_unknown_fields=True):
    """A field left out stays as it is; ``null`` switches the schedule off, or returns retention to the default."""

    backup_schedule: Annotated[str | None, BackupSchedule] | msgspec.UnsetType = msgspec.UNSET
    backup_retention: (
        Annotated[
            int | None,
            msgspec.Meta(description="Newest backups kept (1-100), from the next backup on; null: the platform default"),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class DatabaseOut(msgspec.Struct):
    id: str
    name: str
    engine: str
    status: Annotated[str, msgspec.Meta(description="provisioning | available | failed | deleting | deleted")]
    reason: Annotated[str | None, msgspec.Meta(description="why it failed")]
    host: Annotated[str, msgspec.Meta(description="in-network hostname, reachable from the tenant's apps only")]
    port: int
    memory_mb: int
    backup_retention: Annotated[int | None, msgspec.Meta(description="null: the platform default")]
    backup_schedule: Annotated[str | None, msgspec.Meta(description="cron syntax in UTC; null: no scheduled backups")]
    next_backup_at: Annotated[datetime | None, msgspec.Meta(description="when the schedule next comes round")]
    backups_skipped: Annotated[int, msgspec.Meta(description="scheduled backups skipped (the previous one still ran)")]
    last_backup_skip_reason: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    volume_kept_until: Annotated[datetime | None, msgspec.Meta(description="deleted: when the data volume is purged")]

    @classmethod
    def of(cls, d: Database) -> DatabaseOut:
        return cls(
            id=d.id,
            name=d.name,
            engine=d.engine,
            status=d.status,
            reason=d.reason,
            host=hostname_for(d.name),
            port=engine_facts(d.engine).port,
            memory_mb=d.memory_mb,
            backup_retention=d.backup_retention,
            backup_schedule=d.backup_schedule,
            next_backup_at=d.next_backup_at if d.backup_schedule and d.status in ("provisioning", "available") else None,
            backups_skipped=d.backups_skipped,
            last_backup_skip_reason=d.last_backup_skip_reason,
            created_at=d.created_at,
            updated_at=d.updated_at,
            deleted_at=d.deleted_at,
            volume_kept_until=d.purge_after if d.status == "deleted" else None,
        )


class DatabaseList(msgspec.Struct):
    items: list[DatabaseOut]
    next_cursor: str | None


class ConnectionOut(msgspec.Struct):
    database_id: str
    engine: str
    host: str
    port: int
    user: str
    database: str
    url: Annotated[str, msgspec.Meta(description="password masked as *** unless revealed")]
    revealed: bool


class DatabaseController(Controller):
    path = "/v1/databases"
    tags = ("databases",)
    exception_handlers = {CredentialsUnreadable: secret_unreadable_handler}  # noqa: RUF012 (Litestar's own attribute)

    @endpoint(
        "POST", access=KeyScope.DEPLOY, errors=(409,), status_code=202, summary="Create a managed database (provisioned by a job)"
    )
    def create(
        self, caller_tenant: NamedDependency[str], databases: NamedDependency[DatabaseService], data: JSONBody[DatabaseCreate]
    ) -> Response[DatabaseOut]:
        created = databases.create(
            caller_tenant,
            data.name,
            data.engine,
            memory_mb=data.memory_mb,
            backup_retention=data.backup_retention,
            backup_schedule=data.backup_schedule,
        )
        return Response(DatabaseOut.of(created), status_code=202, headers={"Location": f"/v1/databases/{created.id}"})

    @endpoint("GET", access=KeyScope.READ, summary="List databases (never credentials)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        databases: NamedDependency[DatabaseService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> DatabaseList:
        page = databases.list(caller_tenant, limit=limit, cursor=cursor)
        return DatabaseList(items=[DatabaseOut.of(d) for d in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{db:str}", access=KeyScope.READ, errors=(404,), summary="Get a database by id or name (poll its status)")
    def get(
        self, caller_tenant: NamedDependency[str], databases: NamedDependency[DatabaseService], db: FromPath[str]
    ) -> DatabaseOut:
        return DatabaseOut.of(databases.get(caller_tenant, db))

    @endpoint(
        "PATCH",
        "/{db:str}",
        access=KeyScope.DEPLOY,
        errors=(404, 409),
        summary="Change a database's backup schedule or retention",
    )
    def update(
        self,
        caller_tenant: NamedDependency[str],
        databases: NamedDependency[DatabaseService],
        db: FromPath[str],
        data: JSONBody[DatabasePatch],
    ) -> DatabaseOut:
        return DatabaseOut.of(
            databases.update(caller_tenant, db, backup_schedule=data.backup_schedule, backup_retention=data.backup_retention)
        )

    @endpoint(
        "GET",
        "/{db:str}/connection",
        access=KeyScope.READ,
        errors=(404, 409),
        summary="Where to connect (password masked; ?reveal=true with admin for the URL)",
    )
    def connection(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        databases: NamedDependency[DatabaseService],
        db: FromPath[str],
        reveal: Annotated[bool, Reveal] = False,
    ) -> ConnectionOut:
        tenant_id = caller_tenant
        if reveal and not request.user.allows(KeyScope.ADMIN):
            raise Forbidden(
                f"Revealing credentials needs the 'admin' scope; key {request.user.key_id} has {sorted(request.user.scopes)}.",
                code="insufficient-scope",
            )
        if reveal:
            mark_audited(request, "?reveal=true")  # who saw which credentials is part of the trail
        database, url = databases.connection(tenant_id, db)
        return ConnectionOut(
            database_id=database.id,
            engine=database.engine,
            host=hostname_for(database.name),
            port=engine_facts(database.engine).port,
            user=database.db_user,
            database=database.db_name,
            url=url if reveal else redact_url(url),
            revealed=reveal,
        )

    @endpoint(
        "DELETE",
        "/{db:str}",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Delete a database (volume kept for the grace period unless ?purge=true)",
    )
    def remove(
        self,
        caller_tenant: NamedDependency[str],
        databases: NamedDependency[DatabaseService],
        db: FromPath[str],
        purge: Annotated[bool, Purge] = False,
        force: Annotated[bool, Force] = False,
    ) -> DatabaseOut:
        return DatabaseOut.of(databases.delete(caller_tenant, db, purge=purge, force=force))


# -- operators: per-tenant database quotas ----------------------------------------------------


class DatabaseLimitsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A full replacement of the tenant's overrides: a field left out (or null) returns to the default."""

    max_databases: Annotated[int | None, msgspec.Meta(description="Databases provisioning or available at once")] = None
    max_memory_mb: Annotated[int | None, msgspec.Meta(description="Memory of all the tenant's databases together (MiB)")] = None


class DatabaseLimitsOut(msgspec.Struct):
    tenant_id: str
    max_databases: int
    max_memory_mb: int
    overrides: DatabaseLimitsIn

    @classmethod
    def of(cls, tenant_id: str, limits: DatabaseLimits) -> DatabaseLimitsOut:
        o = limits.overrides
        return cls(tenant_id, limits.max_databases, limits.max_memory_mb, DatabaseLimitsIn(o.max_databases, o.max_memory_mb))


@endpoint(
    "GET",
    "/v1/tenants/{tenant_id:str}/database-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Get a tenant's database quotas",
    tags=["tenants (operator)"],
)
def get_database_limits(databases: NamedDependency[DatabaseService], tenant_id: FromPath[str]) -> DatabaseLimitsOut:
    return DatabaseLimitsOut.of(tenant_id, databases.limits(tenant_id))


@endpoint(
    "PUT",
    "/v1/tenants/{tenant_id:str}/database-limits",
    access=OPERATOR_ACCESS,
    errors=(404,),
    summary="Set a tenant's database quotas",
    tags=["tenants (operator)"],
)
def put_database_limits(
    databases: NamedDependency[DatabaseService], tenant_id: FromPath[str], data: JSONBody[DatabaseLimitsIn]
) -> DatabaseLimitsOut:
    """Applies to the next database created; running ones are never stopped by a lower limit."""
    limits = databases.set_limits(tenant_id, DatabaseOverrides(data.max_databases, data.max_memory_mb))
    return DatabaseLimitsOut.of(tenant_id, limits)


DATABASE_LIMIT_ROUTES = [get_database_limits, put_database_limits]
