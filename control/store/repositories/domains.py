"""Apps' custom domains, as stored."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.domain.records import Domain, Page
from control.store.models import DomainRow
from control.store.repositories.paging import SelectT, paginate

ID_PREFIX = "dom"
CLAIMING = ("pending", "verifying", "active")  # a failed claim lets go of the name


def to_domain(row: DomainRow) -> Domain:
    return Domain(
        id=row.id,
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        hostname=row.hostname,
        method=row.method,
        token=row.token,
        status=row.status,
        reason=row.reason,
        hsts=bool(row.hsts),
        verify_until=row.verify_until,
        checked_at=row.checked_at,
        verified_at=row.verified_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class DomainRepository:
    """One tenant's domains (``tenant_id=None``: platform-internal, for jobs and the reconciler)."""

    def __init__(self, session: Session, tenant_id: str | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self, query: SelectT) -> SelectT:
        return query if self.tenant_id is None else query.where(DomainRow.tenant_id == self.tenant_id)

    def row(self, ref: str, app_id: str | None = None) -> DomainRow | None:
        """By id or by hostname."""
        column = DomainRow.id if ref.startswith(ID_PREFIX + "_") else DomainRow.hostname
        query = self._scoped(select(DomainRow).where(column == ref))
        if app_id is not None:
            query = query.where(DomainRow.app_id == app_id)
        return self.session.scalar(query.order_by(DomainRow.id.desc()).limit(1))

    def get(self, ref: str, app_id: str | None = None) -> Domain | None:
        row = self.row(ref, app_id)
        return None if row is None else to_domain(row)

    def claim_of(self, hostname: str) -> Domain | None:
        """Whoever holds the name now, in any tenant."""
        query = select(DomainRow).where(DomainRow.hostname == hostname, DomainRow.status.in_(CLAIMING))
        row = self.session.scalar(query)
        return None if row is None else to_domain(row)

    def add(self, **fields: Any) -> Domain:
        row = DomainRow(**fields)
        self.session.add(row)
        self.session.flush()
        return to_domain(row)

    def list(self, app_id: str, *, limit: int, cursor: str | None) -> Page[Domain]:
        query = self._scoped(select(DomainRow).where(DomainRow.app_id == app_id))
        return paginate(self.session, query, DomainRow.id, to_domain, limit=limit, cursor=cursor)

    def count(self, app_id: str) -> int:
        return int(self.session.scalar(select(func.count()).select_from(DomainRow).where(DomainRow.app_id == app_id)) or 0)

    def in_status(self, *statuses: str) -> builtins.list[Domain]:
        query = self._scoped(select(DomainRow).where(DomainRow.status.in_(statuses))).order_by(DomainRow.id)
        return [to_domain(r) for r in self.session.scalars(query)]

    def pending_token(self, hostname: str, token: str) -> Domain | None:
        query = select(DomainRow).where(
            DomainRow.hostname == hostname, DomainRow.token == token, DomainRow.status.in_(("pending", "verifying"))
        )
        row = self.session.scalar(query)
        return None if row is None else to_domain(row)

    def delete(self, domain_id: str) -> None:
        row = self.row(domain_id)
        if row is not None:
            self.session.delete(row)
            self.session.flush()
