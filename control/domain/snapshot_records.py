"""Snapshots and their forks as the domain sees them (``control.domain.snapshots``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from control.security.keyring import owner_aad


def var_aad(tenant_id: str, snapshot_id: str, name: str) -> bytes:
    """Binds a value a snapshot keeps to its snapshot and name: copied to another row, it does not open."""
    return owner_aad("snapshot", tenant_id, snapshot_id, name)


@dataclass(frozen=True, slots=True)
class SnapshotLink:
    """A link of the app when it was snapshotted: which database, of which engine, under which name."""

    env_name: str
    database_id: str
    database_name: str
    engine: str


@dataclass(frozen=True, slots=True)
class SnapshotVolume:
    volume_id: str
    name: str
    mount_path: str
    size_mb: int


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """One entry of the manifest: a file under the snapshot's directory and its SHA-256."""

    path: str  # relative to the snapshot's directory: volume-<name>.tar, db-<env name>.<suffix>
    kind: str  # volume | database
    ref: str  # the volume's name, or the link's env name
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str
    tenant_id: str
    app_id: str
    app_name: str
    status: str
    reason: str | None
    release_id: str
    release_number: int
    image_id: str
    image_tag: str
    settings: dict[str, object]
    links: tuple[SnapshotLink, ...]
    volumes: tuple[SnapshotVolume, ...]
    files: tuple[SnapshotFile, ...]
    manifest_sha256: str | None
    size_bytes: int
    paused_ms: int | None
    created_at: datetime
    finished_at: datetime | None
    env_names: tuple[str, ...] = field(default=())

    @property
    def release_name(self) -> str:
        return f"v{self.release_number}"

    @property
    def is_finished(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True, slots=True)
class StoredSnapshotVar:
    id: str
    tenant_id: str
    snapshot_id: str
    name: str
    ciphertext: bytes = field(repr=False)
    master_key_id: str
    secret: bool


@dataclass(frozen=True, slots=True)
class ForkedVolume:
    volume_id: str  # the new app's volume
    name: str
    file: str  # the snapshot's file it is filled from


@dataclass(frozen=True, slots=True)
class ForkedDatabase:
    database_id: str  # the new database
    name: str
    engine: str
    env_name: str
    file: str  # the snapshot's dump it is restored from


@dataclass(frozen=True, slots=True)
class ForkPlan:
    volumes: tuple[ForkedVolume, ...] = ()
    databases: tuple[ForkedDatabase, ...] = ()
    deploy: bool = True  # a release of the snapshot's image once the data is in


@dataclass(frozen=True, slots=True)
class Fork:
    id: str
    tenant_id: str
    snapshot_id: str
    app_id: str
    status: str
    reason: str | None
    plan: ForkPlan
    deployment_id: str | None
    created_at: datetime
    finished_at: datetime | None
