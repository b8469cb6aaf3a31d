"""App volumes: the rules (names, mount paths, sizes, per-tenant quotas, deletion) for the
storage that keeps an app's files across its deployments, rollbacks and restarts.

A volume is mounted from the app's next container start on (a deployment, a rollback, the
reconciler recreating its container): the container running when it is created does not
get it. Each volume keeps the quota mode it was made with (``MOORAGE_VOLUME_QUOTA``):
``enforced`` (its size is a filesystem's: a write past it fails inside the app with ENOSPC)
or ``measured`` (a plain Docker volume the reconciler measures; one over its size is
``full`` and the app's deploys are refused until it is under again).

The storage is made before the volume's row is written, so a refused request (a name taken,
a quota exceeded) makes nothing at all, and a row never names storage that was not made.
It goes after the row's delete is committed; what a failure leaves behind, the reconciler
removes (storage no volume accounts for).
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import Conflict, DomainError, Invalid, NotFound, QuotaExceeded
from control.domain.names import check_dns_label
from control.domain.records import App, StorageOverrides, Volume
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import AppRepository
from control.store.repositories.deployments import DeploymentRepository
from control.store.repositories.releases import AppRuntimeRepository
from control.store.repositories.snapshots import SnapshotRepository
from control.store.repositories.tenants import TenantRepository
from control.store.repositories.volumes import StorageLimitsRepository, VolumeRepository

log = structlog.get_logger("moorage.volumes")

ENFORCED, MEASURED = "enforced", "measured"
READY, FULL = "ready", "full"
MiB = 2**20
MAX_PATH_CHARS = 255
# System directories whose contents the app's image and the sandbox provide.
RESERVED_PATHS = ("/proc", "/sys", "/dev", "/etc")
# Docker joins volume, path and mode with ':' (and splits options on ','): no such characters.
_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")


class VolumeStorageFailed(DomainError):
    """The host could not make or reach a volume's storage; nothing was created."""

    title = "Volume storage unavailable"
    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="volume-storage-unavailable")


class VolumeStorage(Protocol):
    """What the rules need done outside the database (``control.jobs.volumes`` does it)."""

    def create(self, volume: Volume, tenant: str, app: str) -> None:
        """Make the volume's storage; ``VolumeStorageFailed`` (nothing left) when it cannot."""

    def remove(self, volume_id: str) -> None:
        """Remove storage that no row will name (a create whose row was not committed)."""

    def mounted_by(self, tenant: str, app: str, volume_id: str) -> list[str]:
        """Names of the app's running containers that mount the volume."""
        ...

    def release(self, app_id: str, tenant: str, app: str, volume_id: str) -> None:
        """After its row's delete committed: stop the containers using it, remove its storage."""


@dataclass(frozen=True)
class VolumeConfig:
    quota: str = ENFORCED  # the mode new volumes are made in
    max_size_mb: int = 10240
    max_volumes: int = 10
    max_total_mb: int = 20480
    max_snapshot_mb: int = 20480  # every snapshot's files together (control.domain.snapshots enforces it)


@dataclass(frozen=True)
class StorageLimits:
    max_volumes: int
    max_total_mb: int
    overrides: StorageOverrides
    volumes: int = 0  # in use now
    total_mb: int = 0
    max_snapshot_mb: int = 20480
    snapshot_bytes: int = 0  # what the tenant's snapshots hold now


def check_mount_path(path: str) -> str:
    """Absolute, normalised, not ``/`` and not in a system directory; 422 naming the field."""
    reason = None
    if not isinstance(path, str) or len(path) > MAX_PATH_CHARS or _PATH.fullmatch(path) is None:
        reason = f"an absolute path of letters, digits, '.', '_' and '-' components, at most {MAX_PATH_CHARS} characters"
    elif posixpath.normpath(path) != path:
        reason = f"normalised (no '.' or '..' components): {posixpath.normpath(path)!r}"
    elif any(path == p or path.startswith(p + "/") for p in RESERVED_PATHS):
        reason = f"outside {', '.join(RESERVED_PATHS)}"
    if reason is not None:
        raise Invalid(
            f"'mount_path' must be {reason}; got {str(path)[:80]!r}. Fix it and retry; nothing was created.",
            errors=[{"field": "mount_path", "message": f"must be {reason}"}],
        )
    return path


def overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def full_reason(app: str, volume: Volume) -> str:
    used = f"{(volume.used_bytes or 0) / MiB:.1f} MiB"
    return (
        f"volume '{volume.name}' of app '{app}' holds {used}, over its size of {volume.size_mb} MiB "
        "(a measured volume: this host does not enforce sizes), so deploys are refused until it is under. "
        "Free space through the running app (the reconciler measures again within a minute), or delete the volume"
    )


class VolumeService:
    def __init__(self, db: Store, storage: VolumeStorage, config: VolumeConfig) -> None:
        self.db = db
        self.storage = storage
        self.config = config

    # -- quotas ---------------------------------------------------------------------------
    def limits(self, tenant_id: str) -> StorageLimits:
        with self.db.read() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            return self._limits(StorageLimitsRepository(session).get(tenant_id), VolumeRepository(session, tenant_id))

    def set_limits(self, tenant_id: str, overrides: StorageOverrides) -> StorageLimits:
        check_overrides(overrides)
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            return self._limits(StorageLimitsRepository(session).set(tenant_id, overrides), VolumeRepository(session, tenant_id))

    def _limits(self, overrides: StorageOverrides, volumes: VolumeRepository) -> StorageLimits:
        using = volumes.usage()
        return StorageLimits(
            max_volumes=self.config.max_volumes if overrides.max_volumes is None else overrides.max_volumes,
            max_total_mb=self.config.max_total_mb if overrides.max_total_mb is None else overrides.max_total_mb,
            overrides=overrides,
            volumes=len(using),
            total_mb=sum(mb for _, mb in using),
            max_snapshot_mb=self.config.max_snapshot_mb if overrides.max_snapshot_mb is None else overrides.max_snapshot_mb,
            snapshot_bytes=SnapshotRepository(volumes.session, volumes.tenant_id).stored_bytes(),
        )

    # -- lifecycle ------------------------------------------------------------------------
    def create(self, tenant_id: str, app_ref: str, name: str, mount_path: str, size_mb: int) -> Volume:
        with self.db.read() as session:
            app, tenant = self._app(session, tenant_id, app_ref)  # 404 first: another tenant's app is never there
            self._check_request(name, mount_path, size_mb)
            self._check_fits(session, tenant_id, app, name, mount_path, size_mb)
        now = utcnow()
        planned = Volume(
            new_id("vol"), tenant_id, app.id, name, mount_path, size_mb, self.config.quota, READY, None, None, now, now
        )
        self.storage.create(planned, tenant, app.name)
        try:
            with self.db.write() as session:  # again under the write lock: two creates at once cannot both fit
                self._check_fits(session, tenant_id, app, name, mount_path, size_mb)
                created = VolumeRepository(session, tenant_id).add(
                    id=planned.id,
                    app_id=app.id,
                    name=name,
                    mount_path=mount_path,
                    size_mb=size_mb,
                    quota=planned.quota,
                    status=READY,
                )
        except BaseException:
            self.storage.remove(planned.id)
            raise
        self.db.on_failure(lambda: self.storage.remove(planned.id))  # the request's commit failed: no row names it
        log.info("volume_created", volume_id=created.id, app_id=app.id, size_mb=size_mb, quota=created.quota)
        return created

    def list(self, tenant_id: str, app_ref: str) -> list[Volume]:
        with self.db.read() as session:
            app, _ = self._app(session, tenant_id, app_ref)
            return VolumeRepository(session, tenant_id).for_app(app.id)

    def get(self, tenant_id: str, app_ref: str, ref: str) -> Volume:
        with self.db.read() as session:
            app, _ = self._app(session, tenant_id, app_ref)
            found = VolumeRepository(session, tenant_id).get(app.id, ref)
        if found is None:
            raise NotFound.of("volume", ref)
        return found

    def delete(self, tenant_id: str, app_ref: str, ref: str, *, force: bool = False) -> Volume:
        """The volume and its data. Refused while a running container of the app mounts it,
        unless ``force``: then that container is stopped first (the reconciler starts the app
        again, without the volume)."""
        with self.db.read() as session:
            app, tenant = self._app(session, tenant_id, app_ref)
            volume = VolumeRepository(session, tenant_id).get(app.id, ref)
            if volume is None:
                raise NotFound.of("volume", ref)
            may_run = AppRuntimeRepository(session).current_release_id(app.id) is not None or bool(
                DeploymentRepository(session, tenant_id).active(app.id)
            )
        users = self.storage.mounted_by(tenant, app.name, volume.id) if may_run else []
        if users and not force:
            raise Conflict(
                f"Volume '{volume.name}' is mounted by the running container(s) {', '.join(users)} of app '{app.name}'. "
                f"Delete it with ?force=true to stop the app first and lose the data, or delete the app with ?purge=true.",
                code="volume-mounted",
            )
        with self.db.write() as session:
            repo = VolumeRepository(session, tenant_id)
            if repo.get(app.id, volume.id) is None:
                raise NotFound.of("volume", ref)
            repo.delete(volume.id)
        self.db.after_commit(lambda: self.storage.release(app.id, tenant, app.name, volume.id))
        log.info("volume_deleted", volume_id=volume.id, app_id=app.id, forced=bool(users))
        return volume

    # -- for the pipeline and the reconciler (platform-internal: no tenant scope) ----------
    def for_app(self, app_id: str) -> builtins.list[Volume]:
        with self.db.read() as session:
            return VolumeRepository(session, None).for_app(app_id)

    def all(self) -> builtins.list[Volume]:
        with self.db.read() as session:
            return VolumeRepository(session, None).all()

    def record_usage(self, measured: Mapping[str, int | None]) -> builtins.list[str]:
        """Store each volume's measured bytes; a measured volume over its size turns ``full``
        (and ``ready`` again once under). What changed, in words."""
        changes = []
        now = utcnow()
        with self.db.write() as session:
            repo = VolumeRepository(session, None)
            for volume in repo.all():
                if volume.id not in measured:
                    continue
                used = measured[volume.id]
                known = used if used is not None else volume.used_bytes
                over = volume.quota == MEASURED and known is not None and known > volume.size_mb * MiB
                status = FULL if over else READY
                if status != volume.status:
                    changes.append(
                        f"volume {volume.id} ({volume.name}) {status}: {(known or 0) / MiB:.1f} of {volume.size_mb} MiB"
                    )
                repo.record_usage(volume.id, used, status, now)
        return changes

    # -- inside -------------------------------------------------------------------------------
    def _check_request(self, name: str, mount_path: str, size_mb: int) -> None:
        check_dns_label("name", name)
        check_mount_path(mount_path)
        if not 1 <= size_mb <= self.config.max_size_mb:
            raise Invalid(
                f"'size_mb' must be between 1 and {self.config.max_size_mb} (MOORAGE_VOLUME_MAX_SIZE_MB); got {size_mb}.",
                errors=[{"field": "size_mb", "message": f"between 1 and {self.config.max_size_mb}"}],
            )

    @staticmethod
    def _app(session: Session, tenant_id: str, app_ref: str) -> tuple[App, str]:
        app = AppRepository(session, tenant_id).get(app_ref)
        tenant = TenantRepository(session).get(tenant_id)
        if app is None or tenant is None:
            raise NotFound.of("app", app_ref)
        return app, tenant.name

    def _check_fits(self, session: Session, tenant_id: str, app: App, name: str, mount_path: str, size_mb: int) -> None:
        if app.replicas > 1:  # checked again under the write lock: a scale-up meanwhile is seen
            raise Conflict(
                f"App '{app.name}' runs {app.replicas} replicas, and a volume has one writer at a time. "
                f'Scale it to 1 first (PATCH /v1/apps/{app.name} {{"replicas": 1}}).',
                code="replicas-with-volume",
            )
        repo = VolumeRepository(session, tenant_id)
        for other in repo.for_app(app.id):
            if other.name == name:
                raise Conflict(f"App '{app.name}' already has a volume named '{name}'; pick another name.", code="name-taken")
            if overlaps(other.mount_path, mount_path):
                raise Invalid(
                    f"'mount_path' {mount_path} overlaps volume '{other.name}' at {other.mount_path}; "
                    "an app's volumes are mounted at paths that do not contain one another.",
                    errors=[{"field": "mount_path", "message": f"overlaps volume '{other.name}' at {other.mount_path}"}],
                )
        limits = self._limits(StorageLimitsRepository(session).get(tenant_id), repo)
        using = ", ".join(f"{n} ({mb} MiB)" for n, mb in repo.usage()) or "none"
        if limits.volumes + 1 > limits.max_volumes:
            raise QuotaExceeded(
                f"Quota exceeded: this tenant may have {limits.max_volumes} volume(s) and has {limits.volumes} ({using}). "
                "Delete one with DELETE /v1/apps/{app}/volumes/{name}, or ask an operator to raise the limit.",
            )
        if limits.total_mb + size_mb > limits.max_total_mb:
            raise QuotaExceeded(
                f"Quota exceeded: {size_mb} MiB more would make {limits.total_mb + size_mb} MiB of volumes; the limit is "
                f"{limits.max_total_mb} MiB (in use: {using}). Ask for less size_mb, delete a volume, "
                "or ask an operator to raise the limit.",
            )


def check_overrides(overrides: StorageOverrides) -> None:
    bad = [
        f
        for f, v in (
            ("max_volumes", overrides.max_volumes),
            ("max_total_mb", overrides.max_total_mb),
            ("max_snapshot_mb", overrides.max_snapshot_mb),
        )
        if v is not None and v < 0
    ]
    if bad:
        raise Invalid("Limits cannot be negative.", errors=[{"field": f, "message": "0 or more"} for f in bad])
