"""Environment variables as stored: sealed blobs, never plaintext."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from control.domain.records import EnvApp, StoredEnvVar
from control.ids import new_id
from control.store.models import AppRow, EnvVarRow, EnvVarVersionRow
from control.store.repositories.apps import APP


def to_stored(row: EnvVarRow) -> StoredEnvVar:
    return StoredEnvVar(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        name=row.name,
        ciphertext=row.ciphertext,
        master_key_id=row.master_key_id,
        version=row.version,
        secret=row.secret,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class EnvVarRepository:
    """One tenant's env vars: every query carries the tenant id, whatever the caller passes."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def app(self, ref: str, *, previews: bool = False) -> EnvApp | None:
        """``previews``: a preview's too (its deploys, and the copy of its app's vars it is
        made with); the env endpoints never find one."""
        column = AppRow.id if ref.startswith("app_") else AppRow.name
        query = select(AppRow).where(AppRow.tenant_id == self.tenant_id, column == ref)
        row = self.session.scalar(query if previews else query.where(AppRow.kind == APP))
        return None if row is None else EnvApp(row.id, row.tenant_id, row.name, row.env_version)

    def list(self, app_id: str) -> list[StoredEnvVar]:
        query = select(EnvVarRow).where(EnvVarRow.tenant_id == self.tenant_id, EnvVarRow.app_id == app_id)
        return [to_stored(row) for row in self.session.scalars(query.order_by(EnvVarRow.name))]

    def insert(self, app_id: str, name: str, *, ciphertext: bytes, master_key_id: str, secret: bool) -> None:
        self.session.add(
            EnvVarRow(
                id=new_id("env"),
                tenant_id=self.tenant_id,
                app_id=app_id,
                name=name,
                ciphertext=ciphertext,
                master_key_id=master_key_id,
                version=1,
                secret=secret,
            )
        )
        self._keep_version(app_id, name, 1, ciphertext, master_key_id, secret)

    def overwrite(self, var_id: str, *, ciphertext: bytes, master_key_id: str, secret: bool) -> None:
        self.session.execute(
            update(EnvVarRow)
            .where(EnvVarRow.id == var_id, EnvVarRow.tenant_id == self.tenant_id)
            .values(ciphertext=ciphertext, master_key_id=master_key_id, secret=secret, version=EnvVarRow.version + 1)
        )
        row = self.session.execute(
            select(EnvVarRow.app_id, EnvVarRow.name, EnvVarRow.version).where(EnvVarRow.id == var_id)
        ).one()
        self._keep_version(row.app_id, row.name, row.version, ciphertext, master_key_id, secret)

    def _keep_version(self, app_id: str, name: str, version: int, ciphertext: bytes, master_key_id: str, secret: bool) -> None:
        self.session.add(
            EnvVarVersionRow(
                id=new_id("env"),
                tenant_id=self.tenant_id,
                app_id=app_id,
                name=name,
                version=version,
                ciphertext=ciphertext,
                master_key_id=master_key_id,
                secret=secret,
            )
        )

    def current_version_ids(self, app_id: str) -> dict[str, str]:
        """Each current var's kept value: the newest version row of its name and version (a
        var removed and set again restarts at version 1, under a newer id)."""
        query = (
            select(EnvVarVersionRow.name, func.max(EnvVarVersionRow.id))
            .join(
                EnvVarRow,
                (EnvVarRow.app_id == EnvVarVersionRow.app_id)
                & (EnvVarRow.name == EnvVarVersionRow.name)
                & (EnvVarRow.version == EnvVarVersionRow.version),
            )
            .where(EnvVarVersionRow.tenant_id == self.tenant_id, EnvVarVersionRow.app_id == app_id)
            .group_by(EnvVarVersionRow.name)
        )
        return {str(name): str(version_id) for name, version_id in self.session.execute(query)}

    def versions(self, app_id: str, version_ids: Sequence[str]) -> dict[str, StoredEnvVar]:
        """Kept values by version id, as stored vars (only this tenant's app's)."""
        rows = self.session.scalars(
            select(EnvVarVersionRow).where(
                EnvVarVersionRow.tenant_id == self.tenant_id,
                EnvVarVersionRow.app_id == app_id,
                EnvVarVersionRow.id.in_(version_ids),
            )
        )
        return {
            row.id: StoredEnvVar(
                row.id, row.tenant_id, row.app_id, row.name, row.ciphertext, row.master_key_id, row.version, row.secret,
                row.created_at, row.created_at,
            )
            for row in rows
        }  # fmt: skip

    def remove(self, app_id: str, names: Sequence[str]) -> None:
        if names:
            self.session.execute(
                delete(EnvVarRow).where(
                    EnvVarRow.tenant_id == self.tenant_id, EnvVarRow.app_id == app_id, EnvVarRow.name.in_(names)
                )
            )

    def bump_env_version(self, app_id: str) -> int:
        self.session.execute(
            update(AppRow)
            .where(AppRow.id == app_id, AppRow.tenant_id == self.tenant_id)
            .values(env_version=AppRow.env_version + 1)
        )
        version = self.session.scalar(select(AppRow.env_version).where(AppRow.id == app_id))
        return int(version or 0)
