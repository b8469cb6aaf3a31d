"""Backups of a managed database (``/v1/databases/{db}/backups``) and restores from them.

``POST`` answers 202 with the backup (``pending`` → ``running`` → ``succeeded`` | ``failed``);
each file carries its SHA-256. Only the newest N are kept (the database's
``backup_retention``, else the platform default). ``.../download`` streams the file
(``admin`` scope: it holds the data). ``.../restore`` answers 202 with a restore to poll; it
verifies the recorded checksum before touching the target, so a corrupt or tampered file
fails the restore with a reason and leaves the database as it was.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import File

from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.backups import BackupService
from control.domain.records import Backup, Restore
from control.security.scopes import KeyScope


class BackupOut(msgspec.Struct):
    id: str
    database_id: str
    engine: str
    status: Annotated[str, msgspec.Meta(description="pending | running | succeeded | failed")]
    trigger: Annotated[str, msgspec.Meta(description="manual (POST) | schedule (the database's backup_schedule)")]
    reason: str | None
    size: Annotated[int | None, msgspec.Meta(description="bytes")]
    checksum: Annotated[str | None, msgspec.Meta(description="sha256:<hex> of the file")]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, b: Backup) -> BackupOut:
        return cls(
            b.id,
            b.database_id,
            b.engine,
            b.status,
            b.trigger,
            b.reason,
            b.size,
            f"sha256:{b.sha256}" if b.sha256 else None,
            b.created_at,
            b.finished_at,
        )


class BackupList(msgspec.Struct):
    items: list[BackupOut]
    next_cursor: str | None


class RestoreIn(msgspec.Struct, forbid_unknown_fields=True):
    target: Annotated[
        str | None, msgspec.Meta(description="Database id or name of the same engine in the tenant; default the backup's own")
    ] = None


class RestoreOut(msgspec.Struct):
    id: str
    backup_id: str
    target_database_id: str
    status: Annotated[str, msgspec.Meta(description="pending | running | succeeded | failed")]
    reason: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, r: Restore) -> RestoreOut:
        return cls(r.id, r.backup_id, r.target_id, r.status, r.reason, r.created_at, r.finished_at)


class BackupController(Controller):
    path = "/v1/databases/{db:str}/backups"
    tags = ("databases",)

    @endpoint("POST", access=KeyScope.DEPLOY, errors=(404,), status_code=202, summary="Back up a database (a job)")
    def create(
        self, caller_tenant: NamedDependency[str], backups: NamedDependency[BackupService], db: FromPath[str]
    ) -> Response[BackupOut]:
        backup = backups.create(caller_tenant, db)
        return Response(BackupOut.of(backup), status_code=202, headers={"Location": f"/v1/databases/{db}/backups/{backup.id}"})

    @endpoint("GET", access=KeyScope.READ, errors=(404,), summary="List a database's backups (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        backups: NamedDependency[BackupService],
        db: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> BackupList:
        page = backups.list(caller_tenant, db, limit=limit, cursor=cursor)
        return BackupList([BackupOut.of(b) for b in page.items], page.next_cursor)

    @endpoint("GET", "/{backup:str}", access=KeyScope.READ, errors=(404,), summary="Get a backup (poll its status)")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        backups: NamedDependency[BackupService],
        db: FromPath[str],
        backup: FromPath[str],
    ) -> BackupOut:
        return BackupOut.of(backups.get(caller_tenant, db, backup))

    @endpoint(
        "GET",
        "/{backup:str}/download",
        access=KeyScope.ADMIN,
        errors=(404, 409),
        summary="Download a backup file (streamed; admin)",
        media_type="application/octet-stream",
    )
    def download(
        self,
        caller_tenant: NamedDependency[str],
        backups: NamedDependency[BackupService],
        db: FromPath[str],
        backup: FromPath[str],
    ) -> File:
        found, path = backups.file(caller_tenant, db, backup)
        digest = base64.b64encode(bytes.fromhex(found.sha256 or "")).decode()
        return File(
            path=path,
            filename=f"{found.id}{path.suffix}",
            media_type="application/octet-stream",
            headers={"Repr-Digest": f"sha-256=:{digest}:", "X-Checksum-SHA256": found.sha256 or ""},
        )

    @endpoint(
        "POST",
        "/{backup:str}/restore",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Restore a backup into this or another database of the same engine (a job)",
    )
    def restore(
        self,
        caller_tenant: NamedDependency[str],
        backups: NamedDependency[BackupService],
        db: FromPath[str],
        backup: FromPath[str],
        data: JSONBody[RestoreIn],
    ) -> Response[RestoreOut]:
        restore = backups.restore(caller_tenant, db, backup, data.target)
        location = f"/v1/databases/{db}/backups/{backup}/restores/{restore.id}"
        return Response(RestoreOut.of(restore), status_code=202, headers={"Location": location})

    @endpoint(
        "GET",
        "/{backup:str}/restores/{restore:str}",
        access=KeyScope.READ,
        errors=(404,),
        summary="Get a restore (poll its status)",
    )
    def get_restore(
        self,
        caller_tenant: NamedDependency[str],
        backups: NamedDependency[BackupService],
        db: FromPath[str],
        backup: FromPath[str],
        restore: FromPath[str],
    ) -> RestoreOut:
        return RestoreOut.of(backups.get_restore(caller_tenant, db, backup, restore))
