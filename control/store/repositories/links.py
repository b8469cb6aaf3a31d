"""Links between apps and managed databases (both of one tenant)."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from control.domain.records import Link
from control.store.models import AppRow, DatabaseLinkRow, DatabaseRow


class LinkRepository:
    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _query(self) -> Select[DatabaseLinkRow, str, str, str]:
        return (
            select(DatabaseLinkRow, AppRow.name, DatabaseRow.name, DatabaseRow.engine)
            .join(AppRow, AppRow.id == DatabaseLinkRow.app_id)
            .join(DatabaseRow, DatabaseRow.id == DatabaseLinkRow.database_id)
            .where(DatabaseLinkRow.tenant_id == self.tenant_id)
        )

    @staticmethod
    def _link(row: DatabaseLinkRow, app_name: str, db_name: str, engine: str) -> Link:
        return Link(row.id, row.tenant_id, row.app_id, app_name, row.database_id, db_name, engine, row.env_name, row.created_at)

    def for_app(self, app_id: str) -> list[Link]:
        query = self._query().where(DatabaseLinkRow.app_id == app_id).order_by(DatabaseLinkRow.id)
        return [self._link(*r) for r in self.session.execute(query).all()]

    def for_database(self, database_id: str) -> list[Link]:
        query = self._query().where(DatabaseLinkRow.database_id == database_id).order_by(DatabaseLinkRow.id)
        return [self._link(*r) for r in self.session.execute(query).all()]

    def get(self, app_id: str, link_id: str) -> Link | None:
        query = self._query().where(DatabaseLinkRow.app_id == app_id, DatabaseLinkRow.id == link_id)
        found = self.session.execute(query).first()
        return None if found is None else self._link(*found)

    def add(self, *, id: str, app_id: str, database_id: str, env_name: str) -> None:
        self.session.add(
            DatabaseLinkRow(id=id, tenant_id=self.tenant_id, app_id=app_id, database_id=database_id, env_name=env_name)
        )
        self.session.flush()

    def remove(self, link_id: str) -> None:
        row = self.session.get(DatabaseLinkRow, link_id)
        if row is not None and row.tenant_id == self.tenant_id:
            self.session.delete(row)
            self.session.flush()
