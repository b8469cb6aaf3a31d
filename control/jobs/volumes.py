"""App volumes on the app runtime port: the storage the domain's rules ask for
(``control.domain.volumes.VolumeStorage``), the mounts a container start gets, and the
reconciler's part (usage measured, storage nothing accounts for removed).

Stopping the containers that use a volume and removing its storage happen holding the app's
lock, so neither a swap nor the reconciler starts one of the app's containers in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from control.domain.records import Volume
from control.domain.volumes import VolumeService, VolumeStorageFailed
from control.jobs.runtime_port import AppContainer, AppRuntime, VolumeMount
from control.jobs.workers import AppLocks
from runtime.volumes import VolumeError, VolumeInUse

log = structlog.get_logger("moorage.volumes")


def mounts_of(volumes: Iterable[Volume]) -> tuple[VolumeMount, ...]:
    return tuple(VolumeMount(v.id, v.mount_path, v.enforced) for v in volumes)


class RuntimeVolumes:
    """``VolumeStorage`` on the app runtime port."""

    def __init__(self, runtime: AppRuntime, locks: AppLocks) -> None:
        self.runtime = runtime
        self.locks = locks

    def create(self, volume: Volume, tenant: str, app: str) -> None:
        try:
            self.runtime.create_volume(
                volume_id=volume.id, tenant=tenant, app=app, size_mb=volume.size_mb, enforced=volume.enforced
            )
        except VolumeError as exc:
            log.warning("volume_not_created", volume_id=volume.id, error=str(exc))
            raise VolumeStorageFailed(f"The volume's storage could not be made ({exc}); nothing was created.") from None

    def remove(self, volume_id: str) -> None:
        if not self.runtime.ever_started_anything():
            return  # this control plane never made anything: no storage to remove
        try:
            self.runtime.remove_volume(volume_id)
        except Exception as exc:  # noqa: BLE001 (what is left, the reconciler's orphan sweep removes)
            log.warning("volume_not_removed", volume_id=volume_id, error=f"{type(exc).__name__}: {exc}")

    def mounted_by(self, tenant: str, app: str, volume_id: str) -> list[str]:
        if not self.runtime.ever_started_anything():
            return []
        return [c.name for c in self._users(tenant, app) if c.running and volume_id in c.volumes]

    def _users(self, tenant: str, app: str) -> list[AppContainer]:
        """The app's containers and its runs' (a run mounts the app's volumes too)."""
        runs = [c for c in self.runtime.owned_runs(tenant=tenant) if c.app == app]
        return [*self.runtime.owned_apps(tenant=tenant, app=app), *runs]

    def release(self, app_id: str, tenant: str, app: str, volume_id: str) -> None:
        if not self.runtime.ever_started_anything():
            return  # this control plane never made anything: no container, no storage
        with self.locks.hold(app_id):
            for container in self._users(tenant, app):
                if volume_id in container.volumes:  # stopped ones too: they keep the volume referenced
                    self.runtime.stop(container.id)
                    self.runtime.remove(container.id)
                    log.info("volume_user_stopped", volume_id=volume_id, container=container.name)
            self.remove(volume_id)


class VolumeUpkeep:
    """The reconciler's part: each app's mounts, usage measured, orphans removed."""

    def __init__(
        self,
        volumes: VolumeService,
        runtime: AppRuntime,
        *,
        orphan_grace_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.volumes = volumes
        self.runtime = runtime
        self.orphan_grace_s = orphan_grace_s
        self.clock = clock

    def mounts(self, app_id: str) -> tuple[VolumeMount, ...]:
        return mounts_of(self.volumes.for_app(app_id))

    def measure(self) -> list[str]:
        known = self.volumes.all()
        if not known:
            return []
        return self.volumes.record_usage(self.runtime.volume_usage(mounts_of(known)))

    def remove_orphans(self) -> list[str]:
        # Storage first, then the rows: storage listed here was made before these reads, so it
        # is either a committed volume's or old enough (past the grace) to be no create's in flight.
        owned = self.runtime.owned_volumes()
        if not owned:
            return []
        known = {v.id for v in self.volumes.all()}
        removed = []
        for volume_id, made in owned.items():
            if volume_id in known or self.clock() - made < self.orphan_grace_s:
                continue
            try:
                self.runtime.remove_volume(volume_id)
            except VolumeInUse:
                continue  # an orphan container still has it: the container sweep removes it first
            removed.append(f"volume {volume_id}")
        return removed
