from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.domain.records import Page, Tenant
from control.store.models import AppRow, DatabaseRow, TenantRow
from control.store.repositories.paging import paginate


def to_tenant(row: TenantRow) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        display_name=row.display_name,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class TenantRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *, id: str, name: str, display_name: str, status: str = "active") -> Tenant:
        row = TenantRow(id=id, name=name, display_name=display_name, status=status)
        self.session.add(row)
        self.session.flush()
        return to_tenant(row)

    def get(self, tenant_id: str) -> Tenant | None:
        row = self.session.get(TenantRow, tenant_id)
        return None if row is None else to_tenant(row)

    def by_name(self, name: str) -> Tenant | None:
        row = self.session.scalar(select(TenantRow).where(TenantRow.name == name))
        return None if row is None else to_tenant(row)

    def names(self) -> set[str]:
        return set(self.session.scalars(select(TenantRow.name)))

    def ids_by_name(self) -> dict[str, str]:
        rows = self.session.execute(select(TenantRow.name, TenantRow.id))
        return {str(name): str(tenant_id) for name, tenant_id in rows}

    def ids(self) -> set[str]:
        return set(self.session.scalars(select(TenantRow.id)))

    def name_taken(self, name: str) -> bool:
        return self.session.scalar(select(TenantRow.id).where(TenantRow.name == name)) is not None

    def list(self, *, limit: int, cursor: str | None, status: str | None = None) -> Page[Tenant]:
        query = select(TenantRow) if status is None else select(TenantRow).where(TenantRow.status == status)
        return paginate(self.session, query, TenantRow.id, to_tenant, limit=limit, cursor=cursor)

    def set_status(self, tenant_id: str, status: str) -> Tenant | None:
        row = self.session.get(TenantRow, tenant_id)
        if row is None:
            return None
        row.status = status
        self.session.flush()
        return to_tenant(row)

    def owned(self, tenant_id: str) -> dict[str, int]:
        """What the tenant still owns that has life outside this database (containers, volumes)."""
        counts = {}
        for kind, model in (("app", AppRow), ("database", DatabaseRow)):
            counts[kind] = self.session.scalar(select(func.count()).where(model.tenant_id == tenant_id)) or 0
        return counts

    def delete(self, tenant_id: str) -> bool:
        row = self.session.get(TenantRow, tenant_id)
        if row is None:
            return False
        self.session.delete(row)
        self.session.flush()
        return True
