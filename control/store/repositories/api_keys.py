from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control.domain.records import ApiKey, Page
from control.store.models import ApiKeyRow
from control.store.repositories.paging import paginate


def to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        secret_hash=row.secret_hash,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        *,
        id: str,
        tenant_id: str | None,
        name: str,
        secret_hash: str,
        scopes: list[str],
        created_by: str | None,
        expires_at: datetime | None,
    ) -> ApiKey:
        row = ApiKeyRow(
            id=id,
            tenant_id=tenant_id,
            name=name,
            secret_hash=secret_hash,
            scopes=scopes,
            created_by=created_by,
            expires_at=expires_at,
        )
        self.session.add(row)
        self.session.flush()
        return to_key(row)

    def get(self, key_id: str) -> ApiKey | None:
        row = self.session.get(ApiKeyRow, key_id)
        return None if row is None else to_key(row)

    def list(self, *, tenant_id: str | None, limit: int, cursor: str | None) -> Page[ApiKey]:
        query = select(ApiKeyRow).where(ApiKeyRow.tenant_id.is_(None) if tenant_id is None else ApiKeyRow.tenant_id == tenant_id)
        return paginate(self.session, query, ApiKeyRow.id, to_key, limit=limit, cursor=cursor)

    def any_operator_key(self) -> bool:
        query = select(ApiKeyRow.id).where(ApiKeyRow.tenant_id.is_(None), ApiKeyRow.revoked_at.is_(None))
        return self.session.scalar(query.limit(1)) is not None

    def revoke(self, key_id: str, when: datetime) -> ApiKey | None:
        row = self.session.get(ApiKeyRow, key_id)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = when
            self.session.flush()
        return to_key(row)

    def touch(self, key_id: str, when: datetime) -> None:
        self.session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=when))

    def revoke_all(self, tenant_id: str, when: datetime, *, keep: str) -> int:
        """Revoke every live key of the tenant but ``keep``; how many were revoked."""
        result = self.session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.revoked_at.is_(None), ApiKeyRow.id != keep)
            .values(revoked_at=when)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
