"""Releases (immutable, numbered per app) and app runtimes (the desired state)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from control.domain.records import DesiredApp, Page, Release, ReleaseConfig
from control.store.models import AppRow, AppRuntimeRow, ReleaseRow, SnapshotRow, TenantRow
from control.store.repositories.paging import paginate


def to_release(row: ReleaseRow) -> Release:
    return Release(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        number=row.number,
        deployment_id=row.deployment_id,
        image_id=row.image_id,
        image_tag=row.image_tag,
        env_version=row.env_version,
        port=row.port,
        health_check_path=row.health_check_path,
        rollback_of=row.rollback_of,
        created_at=row.created_at,
        config=ReleaseConfig.from_json(row.config) if row.config else None,
    )


class ReleaseRepository:
    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _query(self, app_id: str) -> Select[ReleaseRow]:
        query = select(ReleaseRow).where(ReleaseRow.app_id == app_id)
        return query if self.tenant_id is None else query.where(ReleaseRow.tenant_id == self.tenant_id)

    def get(self, release_id: str) -> Release | None:
        row = self.session.get(ReleaseRow, release_id)
        if row is None or (self.tenant_id is not None and row.tenant_id != self.tenant_id):
            return None
        return to_release(row)

    def by_number(self, app_id: str, number: int) -> Release | None:
        row = self.session.scalar(self._query(app_id).where(ReleaseRow.number == number))
        return None if row is None else to_release(row)

    def by_deployment(self, deployment_id: str) -> Release | None:
        row = self.session.scalar(select(ReleaseRow).where(ReleaseRow.deployment_id == deployment_id))
        return None if row is None else to_release(row)

    def add(self, *, id: str, tenant_id: str, app_id: str, **fields: object) -> Release:
        # Numbering inside the write transaction (BEGIN IMMEDIATE): no two releases share a number.
        last = self.session.scalar(select(func.max(ReleaseRow.number)).where(ReleaseRow.app_id == app_id))
        row = ReleaseRow(id=id, tenant_id=tenant_id, app_id=app_id, number=(last or 0) + 1, **fields)
        self.session.add(row)
        self.session.flush()
        return to_release(row)

    def remove_unless_current(self, release_id: str) -> bool:
        current = self.session.scalar(select(AppRuntimeRow.app_id).where(AppRuntimeRow.release_id == release_id))
        row = self.session.get(ReleaseRow, release_id)
        if row is None or current is not None:
            return False
        self.session.delete(row)
        self.session.flush()
        return True

    def with_images(self, app_id: str, image_ids: builtins.set[str]) -> builtins.list[Release]:
        """The app's releases made from one of ``image_ids``, oldest first."""
        query = self._query(app_id).where(ReleaseRow.image_id.in_(image_ids)).order_by(ReleaseRow.number)
        return [to_release(row) for row in self.session.scalars(query)]

    def list(self, app_id: str, *, limit: int, cursor: str | None) -> Page[Release]:
        return paginate(self.session, self._query(app_id), ReleaseRow.id, to_release, limit=limit, cursor=cursor)


class AppRuntimeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def current_release_id(self, app_id: str) -> str | None:
        row = self.session.get(AppRuntimeRow, app_id)
        return None if row is None else row.release_id

    def set(self, *, app_id: str, tenant_id: str, release_id: str, containers: Sequence[tuple[str, str]]) -> None:
        row = self.session.get(AppRuntimeRow, app_id)
        if row is None:
            row = AppRuntimeRow(app_id=app_id, tenant_id=tenant_id)
            self.session.add(row)
        row.release_id = release_id
        _set_containers(row, containers)
        self.session.flush()

    def set_containers(self, app_id: str, containers: Sequence[tuple[str, str]]) -> None:
        row = self.session.get(AppRuntimeRow, app_id)
        if row is not None:
            _set_containers(row, containers)
            self.session.flush()

    def desired(self, app_id: str | None = None) -> list[DesiredApp]:
        query = (
            select(AppRuntimeRow, ReleaseRow, AppRow.name, AppRow.replicas, TenantRow.name)
            .join(ReleaseRow, ReleaseRow.id == AppRuntimeRow.release_id)
            .join(AppRow, AppRow.id == AppRuntimeRow.app_id)
            .join(TenantRow, TenantRow.id == AppRuntimeRow.tenant_id)
        )
        if app_id is not None:
            query = query.where(AppRuntimeRow.app_id == app_id)
        return [
            DesiredApp(
                rt.tenant_id,
                tenant_name,
                rt.app_id,
                app_name,
                to_release(rel),
                rt.container_id,
                rt.container_name,
                replicas,
                tuple((str(cid), str(name)) for cid, name in json.loads(rt.containers)) if rt.containers else (),
            )
            for rt, rel, app_name, replicas, tenant_name in self.session.execute(query)
        ]

    def kept_images(self, per_app: int, app_id: str | None = None) -> builtins.set[str]:
        """Image ids of each app's ``per_app`` newest releases (what a rollback may reuse), of
        every app's current one, whatever its age, and of every snapshot (a fork deploys it);
        of one app when ``app_id`` names it."""
        numbered = select(
            ReleaseRow.app_id,
            ReleaseRow.image_id,
            func.row_number().over(partition_by=ReleaseRow.app_id, order_by=ReleaseRow.number.desc()).label("n"),
        ).subquery()
        newest = select(numbered.c.image_id).where(numbered.c.n <= per_app)
        current = select(ReleaseRow.image_id).join(AppRuntimeRow, AppRuntimeRow.release_id == ReleaseRow.id)
        snapshotted = select(SnapshotRow.image_id).where(SnapshotRow.status != "failed")
        if app_id is not None:
            newest = newest.where(numbered.c.app_id == app_id)
            current = current.where(AppRuntimeRow.app_id == app_id)
            snapshotted = snapshotted.where(SnapshotRow.app_id == app_id)
        return set(self.session.scalars(newest)) | set(self.session.scalars(current)) | set(self.session.scalars(snapshotted))

    def any_exist(self) -> bool:
        return self.session.scalar(select(AppRuntimeRow.app_id).limit(1)) is not None


def _set_containers(row: AppRuntimeRow, containers: Sequence[tuple[str, str]]) -> None:
    if not containers:
        raise ValueError("an app's runtime needs at least one container")
    row.container_id, row.container_name = containers[0]
    row.containers = json.dumps([list(pair) for pair in containers])
