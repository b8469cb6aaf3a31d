"""Snapshots, the env vars they keep (sealed) and their forks, as stored."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control.domain.records import Page
from control.domain.snapshot_records import (
    Fork,
    ForkedDatabase,
    ForkedVolume,
    ForkPlan,
    Snapshot,
    SnapshotFile,
    SnapshotLink,
    SnapshotVolume,
    StoredSnapshotVar,
)
from control.store.models import SnapshotEnvVarRow, SnapshotForkRow, SnapshotRow
from control.store.repositories.paging import SelectT, paginate


def to_snapshot(row: SnapshotRow, env_names: Sequence[str] = ()) -> Snapshot:
    return Snapshot(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        app_name=row.app_name,
        status=row.status,
        reason=row.reason,
        release_id=row.release_id,
        release_number=row.release_number,
        image_id=row.image_id,
        image_tag=row.image_tag,
        settings=json.loads(row.settings or "{}"),
        links=tuple(SnapshotLink(**link) for link in json.loads(row.links or "[]")),
        volumes=tuple(SnapshotVolume(**v) for v in json.loads(row.volumes or "[]")),
        files=tuple(SnapshotFile(**f) for f in json.loads(row.files or "[]")),
        manifest_sha256=row.manifest_sha256,
        size_bytes=row.size_bytes or 0,
        paused_ms=row.paused_ms,
        created_at=row.created_at,
        finished_at=row.finished_at,
        env_names=tuple(env_names),
    )


def plan_json(plan: ForkPlan) -> str:
    return json.dumps(
        {
            "volumes": [{"volume_id": v.volume_id, "name": v.name, "file": v.file} for v in plan.volumes],
            "databases": [
                {"database_id": d.database_id, "name": d.name, "engine": d.engine, "env_name": d.env_name, "file": d.file}
                for d in plan.databases
            ],
            "deploy": plan.deploy,
        }
    )


def to_fork(row: SnapshotForkRow) -> Fork:
    doc = json.loads(row.plan or "{}")
    plan = ForkPlan(
        volumes=tuple(ForkedVolume(**v) for v in doc.get("volumes", [])),
        databases=tuple(ForkedDatabase(**d) for d in doc.get("databases", [])),
        deploy=bool(doc.get("deploy", True)),
    )
    return Fork(
        row.id,
        row.tenant_id,
        row.snapshot_id,
        row.app_id,
        row.status,
        row.reason,
        plan,
        row.deployment_id,
        row.created_at,
        row.finished_at,
    )


def to_var(row: SnapshotEnvVarRow) -> StoredSnapshotVar:
    return StoredSnapshotVar(row.id, row.tenant_id, row.snapshot_id, row.name, row.ciphertext, row.master_key_id, row.secret)


class SnapshotRepository:
    """One tenant's snapshots (``tenant_id=None``: platform-internal, for jobs and the image lifecycle)."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT, model: type[SnapshotRow | SnapshotForkRow] = SnapshotRow) -> SelectT:
        return query if self.tenant_id is None else query.where(model.tenant_id == self.tenant_id)

    def _names(self, snapshot_id: str) -> builtins.list[str]:
        query = select(SnapshotEnvVarRow.name).where(SnapshotEnvVarRow.snapshot_id == snapshot_id)
        return sorted(self.session.scalars(query))

    def row(self, snapshot_id: str) -> SnapshotRow | None:
        return self.session.scalar(self._scoped(select(SnapshotRow).where(SnapshotRow.id == snapshot_id)))

    def get(self, snapshot_id: str) -> Snapshot | None:
        row = self.row(snapshot_id)
        return None if row is None else to_snapshot(row, self._names(row.id))

    def add(self, **fields: Any) -> SnapshotRow:
        assert self.tenant_id is not None
        row = SnapshotRow(tenant_id=self.tenant_id, **fields)
        self.session.add(row)
        self.session.flush()
        return row

    def add_var(self, snapshot_id: str, var_id: str, name: str, *, ciphertext: bytes, master_key_id: str, secret: bool) -> None:
        assert self.tenant_id is not None
        self.session.add(
            SnapshotEnvVarRow(
                id=var_id,
                tenant_id=self.tenant_id,
                snapshot_id=snapshot_id,
                name=name,
                ciphertext=ciphertext,
                master_key_id=master_key_id,
                secret=secret,
            )
        )
        self.session.flush()

    def vars(self, snapshot_id: str) -> builtins.list[StoredSnapshotVar]:
        query = self._scoped_vars(select(SnapshotEnvVarRow).where(SnapshotEnvVarRow.snapshot_id == snapshot_id))
        return [to_var(r) for r in self.session.scalars(query.order_by(SnapshotEnvVarRow.name))]

    def _scoped_vars(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(SnapshotEnvVarRow.tenant_id == self.tenant_id)

    def list(self, *, app_id: str | None, limit: int, cursor: str | None) -> Page[Snapshot]:
        query = self._scoped(select(SnapshotRow))
        if app_id is not None:
            query = query.where(SnapshotRow.app_id == app_id)
        return paginate(
            self.session, query, SnapshotRow.id, lambda r: to_snapshot(r, self._names(r.id)), limit=limit, cursor=cursor
        )

    def delete(self, snapshot_id: str) -> None:
        self.session.execute(delete(SnapshotRow).where(SnapshotRow.id == snapshot_id))

    def stored_bytes(self) -> int:
        """Bytes of every snapshot of the tenant that has (or is making) files."""
        query = self._scoped(select(func.coalesce(func.sum(SnapshotRow.size_bytes), 0)).where(SnapshotRow.status != "failed"))
        return int(self.session.scalar(query) or 0)

    def bytes_by_tenant(self) -> dict[str, int]:
        query = select(SnapshotRow.tenant_id, func.sum(SnapshotRow.size_bytes)).group_by(SnapshotRow.tenant_id)
        return {tenant_id: int(n or 0) for tenant_id, n in self.session.execute(query)}

    def kept_images(self, app_id: str | None = None) -> set[str]:
        query = select(SnapshotRow.image_id).where(SnapshotRow.status != "failed")
        if app_id is not None:
            query = query.where(SnapshotRow.app_id == app_id)
        return set(self.session.scalars(query))

    def ids(self) -> set[str]:
        return set(self.session.scalars(select(SnapshotRow.id)))

    # -- forks ---------------------------------------------------------------------------
    def add_fork(self, **fields: Any) -> Fork:
        assert self.tenant_id is not None
        row = SnapshotForkRow(tenant_id=self.tenant_id, **fields)
        self.session.add(row)
        self.session.flush()
        return to_fork(row)

    def fork_row(self, fork_id: str, snapshot_id: str | None = None) -> SnapshotForkRow | None:
        query = self._scoped(select(SnapshotForkRow).where(SnapshotForkRow.id == fork_id), SnapshotForkRow)
        if snapshot_id is not None:
            query = query.where(SnapshotForkRow.snapshot_id == snapshot_id)
        return self.session.scalar(query)

    def fork(self, fork_id: str, snapshot_id: str | None = None) -> Fork | None:
        row = self.fork_row(fork_id, snapshot_id)
        return None if row is None else to_fork(row)

    def forks_of_app(self, app_id: str) -> builtins.list[Fork]:
        query = self._scoped(select(SnapshotForkRow).where(SnapshotForkRow.app_id == app_id), SnapshotForkRow)
        return [to_fork(r) for r in self.session.scalars(query.order_by(SnapshotForkRow.id))]

    def unfinished_forks(self, snapshot_id: str) -> builtins.list[Fork]:
        query = self._scoped(
            select(SnapshotForkRow).where(
                SnapshotForkRow.snapshot_id == snapshot_id, SnapshotForkRow.status.in_(("pending", "restoring"))
            ),
            SnapshotForkRow,
        )
        return [to_fork(r) for r in self.session.scalars(query)]
