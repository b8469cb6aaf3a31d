"""App volumes and per-tenant storage quotas, as stored."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.domain.records import StorageOverrides, Volume
from control.store.models import AppRow, TenantStorageLimitsRow, VolumeRow
from control.store.repositories.paging import SelectT

ID_PREFIX = "vol"


def to_volume(row: VolumeRow) -> Volume:
    return Volume(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        name=row.name,
        mount_path=row.mount_path,
        size_mb=row.size_mb,
        quota=row.quota,
        status=row.status,
        used_bytes=row.used_bytes,
        measured_at=row.measured_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class VolumeRepository:
    """One tenant's volumes (``tenant_id=None``: platform-internal, for the reconciler)."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(VolumeRow.tenant_id == self.tenant_id)

    def row(self, app_id: str, ref: str) -> VolumeRow | None:
        # By id or by name, both only within the app (and the tenant).
        column = VolumeRow.id if ref.startswith(ID_PREFIX + "_") else VolumeRow.name
        return self.session.scalar(self._scoped(select(VolumeRow).where(VolumeRow.app_id == app_id, column == ref)))

    def get(self, app_id: str, ref: str) -> Volume | None:
        row = self.row(app_id, ref)
        return None if row is None else to_volume(row)

    def for_app(self, app_id: str) -> list[Volume]:
        query = self._scoped(select(VolumeRow).where(VolumeRow.app_id == app_id).order_by(VolumeRow.id))
        return [to_volume(r) for r in self.session.scalars(query)]

    def add(self, **fields: Any) -> Volume:
        assert self.tenant_id is not None
        row = VolumeRow(tenant_id=self.tenant_id, **fields)
        self.session.add(row)
        self.session.flush()
        return to_volume(row)

    def delete(self, volume_id: str) -> None:
        row = self.session.get(VolumeRow, volume_id)
        if row is not None and (self.tenant_id is None or row.tenant_id == self.tenant_id):
            self.session.delete(row)
            self.session.flush()

    def usage(self) -> builtins.list[tuple[str, int]]:
        """``(app/volume, size_mb)`` of each of the tenant's volumes, largest first."""
        query = (
            select(AppRow.name, VolumeRow.name, VolumeRow.size_mb)
            .join(AppRow, AppRow.id == VolumeRow.app_id)
            .order_by(VolumeRow.size_mb.desc(), VolumeRow.id)
        )
        return [(f"{app}/{name}", int(mb)) for app, name, mb in self.session.execute(self._scoped(query))]

    def all(self) -> builtins.list[Volume]:
        return [to_volume(r) for r in self.session.scalars(self._scoped(select(VolumeRow).order_by(VolumeRow.id)))]

    def ids(self) -> set[str]:
        return set(self.session.scalars(self._scoped(select(VolumeRow.id))))

    def record_usage(self, volume_id: str, used_bytes: int | None, status: str, at: datetime) -> None:
        row = self.session.get(VolumeRow, volume_id)
        if row is None:
            return
        if used_bytes is not None:
            row.used_bytes, row.measured_at = used_bytes, at
        row.status = status
        self.session.flush()


class StorageLimitsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> StorageOverrides:
        row = self.session.get(TenantStorageLimitsRow, tenant_id)
        return StorageOverrides() if row is None else StorageOverrides(row.max_volumes, row.max_total_mb, row.max_snapshot_mb)

    def set(self, tenant_id: str, overrides: StorageOverrides) -> StorageOverrides:
        row = self.session.get(TenantStorageLimitsRow, tenant_id)
        if row is None:
            row = TenantStorageLimitsRow(tenant_id=tenant_id)
            self.session.add(row)
        row.max_volumes, row.max_total_mb = overrides.max_volumes, overrides.max_total_mb
        row.max_snapshot_mb = overrides.max_snapshot_mb
        self.session.flush()
        return overrides
