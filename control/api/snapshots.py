"""Snapshots of an app (``/v1/apps/{app}/snapshots``, ``/v1/snapshots``) and forks of them.

``POST /v1/apps/{app}/snapshots`` answers 202 with the snapshot (``pending`` → ``running`` →
``succeeded`` | ``failed``): the current release's image, the app's settings, its env vars
(sealed under the snapshot's own binding), its links, a tar of each volume (the app stopped
while it is read: ``paused_ms``) and a dump of each linked database, each file with its
SHA-256 in a manifest whose SHA-256 the snapshot keeps (``manifest_sha256``).

``POST /v1/snapshots/{snapshot}/fork {"name"}`` answers 202 with a fork to poll: it checks
every file first (409 ``snapshot-corrupt`` naming the file, nothing made), then makes the new
app with its own env vars (re-sealed), volumes, databases (new credentials, same engines,
linked under the same names) and, once they are filled, a deployment of the snapshot's image.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.snapshot_records import Fork, Snapshot
from control.domain.snapshots import SnapshotService
from control.security.scopes import KeyScope

SnapshotStatus = Literal["pending", "running", "succeeded", "failed"]
ForkStatus = Literal["pending", "restoring", "deploying", "succeeded", "failed"]


class SnapshotLinkOut(msgspec.Struct):
    env_name: str
    engine: Annotated[str, msgspec.Meta(description="postgres | redis")]
    database: Annotated[str, msgspec.Meta(description="the source database's name")]


class SnapshotVolumeOut(msgspec.Struct):
    name: str
    mount_path: str
    size_mb: int


class SnapshotFileOut(msgspec.Struct):
    path: Annotated[str, msgspec.Meta(description="volume-<name>.tar, or db-<env name>.pgdump / .rdb")]
    kind: Annotated[Literal["volume", "database"], msgspec.Meta(description="what it holds")]
    ref: Annotated[str, msgspec.Meta(description="the volume's name, or the link's env name")]
    size: Annotated[int, msgspec.Meta(description="bytes")]
    sha256: str


class SnapshotOut(msgspec.Struct):
    id: str
    app_id: str
    app: str
    status: Annotated[SnapshotStatus, msgspec.Meta(description="pending | running | succeeded | failed")]
    reason: Annotated[str | None, msgspec.Meta(description="why it failed")]
    release: Annotated[str, msgspec.Meta(description="the release snapshotted (v1, v2, ...)")]
    image: Annotated[str, msgspec.Meta(description="its image id, kept on the host while the snapshot exists")]
    env: Annotated[list[str], msgspec.Meta(description="names of the env vars it keeps (sealed; values never shown)")]
    links: list[SnapshotLinkOut]
    volumes: list[SnapshotVolumeOut]
    files: list[SnapshotFileOut]
    manifest_sha256: Annotated[str | None, msgspec.Meta(description="SHA-256 of manifest.json, which lists every file's")]
    size_bytes: Annotated[int, msgspec.Meta(description="every file together")]
    paused_ms: Annotated[
        int | None, msgspec.Meta(description="how long the app's containers that mount a volume were stopped while it was read")
    ]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, s: Snapshot) -> SnapshotOut:
        return cls(
            id=s.id,
            app_id=s.app_id,
            app=s.app_name,
            status=s.status,  # type: ignore[arg-type]
            reason=s.reason,
            release=s.release_name,
            image=s.image_id,
            env=list(s.env_names),
            links=[SnapshotLinkOut(link.env_name, link.engine, link.database_name) for link in s.links],
            volumes=[SnapshotVolumeOut(v.name, v.mount_path, v.size_mb) for v in s.volumes],
            files=[SnapshotFileOut(f.path, f.kind, f.ref, f.size, f.sha256) for f in s.files],  # type: ignore[arg-type]
            manifest_sha256=s.manifest_sha256,
            size_bytes=s.size_bytes,
            paused_ms=s.paused_ms,
            created_at=s.created_at,
            finished_at=s.finished_at,
        )


class SnapshotList(msgspec.Struct):
    items: list[SnapshotOut]
    next_cursor: str | None


class ForkIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=63,
            pattern="^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
            description="the new app's name (a DNS label, not taken in the tenant)",
            examples=["web-copy"],
        ),
    ]


class ForkedDatabaseOut(msgspec.Struct):
    id: str
    name: str
    engine: str
    env_name: str


class ForkOut(msgspec.Struct):
    id: str
    snapshot_id: str
    app_id: Annotated[str, msgspec.Meta(description="the new app")]
    status: Annotated[
        ForkStatus,
        msgspec.Meta(
            description="pending | restoring (volumes and databases being filled) | deploying (its deployment runs) | "
            "succeeded (the deployment is running) | failed"
        ),
    ]
    reason: str | None
    deployment_id: Annotated[str | None, msgspec.Meta(description="the deployment of the snapshot's image, once queued")]
    volumes: Annotated[list[str], msgspec.Meta(description="the new app's volumes, by name")]
    databases: list[ForkedDatabaseOut]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, f: Fork) -> ForkOut:
        return cls(
            id=f.id,
            snapshot_id=f.snapshot_id,
            app_id=f.app_id,
            status=f.status,  # type: ignore[arg-type]
            reason=f.reason,
            deployment_id=f.deployment_id,
            volumes=[v.name for v in f.plan.volumes],
            databases=[ForkedDatabaseOut(d.database_id, d.name, d.engine, d.env_name) for d in f.plan.databases],
            created_at=f.created_at,
            finished_at=f.finished_at,
        )


class AppSnapshotController(Controller):
    path = "/v1/apps/{app:str}/snapshots"
    tags = ("snapshots",)

    @endpoint("POST", access=KeyScope.DEPLOY, errors=(404,), status_code=202, summary="Snapshot an app (a job)")
    def create(
        self, caller_tenant: NamedDependency[str], snapshots: NamedDependency[SnapshotService], app: FromPath[str]
    ) -> Response[SnapshotOut]:
        """409 `no-release` (never deployed) or `database-not-available` (a linked database is not
        available); 422 `quota-exceeded` (the tenant's snapshot storage, max_snapshot_mb)."""
        snapshot = snapshots.create(caller_tenant, app)
        return Response(SnapshotOut.of(snapshot), status_code=202, headers={"Location": f"/v1/snapshots/{snapshot.id}"})

    @endpoint("GET", access=KeyScope.READ, errors=(404,), summary="List an app's snapshots (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        snapshots: NamedDependency[SnapshotService],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> SnapshotList:
        page = snapshots.list(caller_tenant, app_ref=app, limit=limit, cursor=cursor)
        return SnapshotList([SnapshotOut.of(s) for s in page.items], page.next_cursor)


class SnapshotController(Controller):
    path = "/v1/snapshots"
    tags = ("snapshots",)

    @endpoint("GET", access=KeyScope.READ, summary="List the tenant's snapshots (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        snapshots: NamedDependency[SnapshotService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> SnapshotList:
        page = snapshots.list(caller_tenant, limit=limit, cursor=cursor)
        return SnapshotList([SnapshotOut.of(s) for s in page.items], page.next_cursor)

    @endpoint("GET", "/{snapshot:str}", access=KeyScope.READ, errors=(404,), summary="Get a snapshot (poll its status)")
    def get(
        self, caller_tenant: NamedDependency[str], snapshots: NamedDependency[SnapshotService], snapshot: FromPath[str]
    ) -> SnapshotOut:
        return SnapshotOut.of(snapshots.get(caller_tenant, snapshot))

    @endpoint(
        "DELETE",
        "/{snapshot:str}",
        access=KeyScope.DEPLOY,
        errors=(404,),
        summary="Delete a snapshot and its files (409 snapshot-busy while it is taken or forked)",
    )
    def remove(
        self, caller_tenant: NamedDependency[str], snapshots: NamedDependency[SnapshotService], snapshot: FromPath[str]
    ) -> None:
        snapshots.delete(caller_tenant, snapshot)

    @endpoint(
        "POST",
        "/{snapshot:str}/fork",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Fork a snapshot into a new app (a job: data restored, then the snapshot's image deployed)",
    )
    def fork(
        self,
        caller_tenant: NamedDependency[str],
        snapshots: NamedDependency[SnapshotService],
        snapshot: FromPath[str],
        data: JSONBody[ForkIn],
    ) -> Response[ForkOut]:
        """409 `snapshot-corrupt` (a file does not match its checksum: named, nothing made),
        `snapshot-not-ready`, `name-taken`; 422 `quota-exceeded` (apps, volumes, databases)."""
        fork = snapshots.fork(caller_tenant, snapshot, data.name)
        location = f"/v1/snapshots/{fork.snapshot_id}/forks/{fork.id}"
        return Response(ForkOut.of(fork), status_code=202, headers={"Location": location})

    @endpoint("GET", "/{snapshot:str}/forks/{fork:str}", access=KeyScope.READ, errors=(404,), summary="Get a fork (poll it)")
    def get_fork(
        self,
        caller_tenant: NamedDependency[str],
        snapshots: NamedDependency[SnapshotService],
        snapshot: FromPath[str],
        fork: FromPath[str],
    ) -> ForkOut:
        return ForkOut.of(snapshots.get_fork(caller_tenant, snapshot, fork))


SNAPSHOT_ROUTES = [AppSnapshotController, SnapshotController]
