"""Per-request inference usage (``inference_usage``): written once, read aggregated."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from control.domain.records import Page, UsageBucket, UsageRecord
from control.store.models import InferenceUsageRow
from control.store.repositories.paging import SelectT, paginate


def to_record(row: InferenceUsageRow) -> UsageRecord:
    return UsageRecord(**{name: getattr(row, name) for name in UsageRecord.__dataclass_fields__})


class UsageRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, record: UsageRecord) -> None:
        self.session.add(InferenceUsageRow(**{name: getattr(record, name) for name in UsageRecord.__dataclass_fields__}))
        self.session.flush()

    def tokens_since(self, tenant_id: str, since: datetime) -> int:
        row = InferenceUsageRow
        query = select(func.coalesce(func.sum(row.prompt_tokens + row.completion_tokens), 0)).where(
            row.tenant_id == tenant_id, row.created_at >= since
        )
        return int(self.session.scalar(query) or 0)

    def buckets(self, tenant_id: str | None, since: datetime, until: datetime) -> list[UsageBucket]:
        row = InferenceUsageRow
        day = func.date(row.created_at)
        query = (
            select(
                row.tenant_id,
                day,
                row.model,
                func.count(),
                func.sum(case((row.status != "ok", 1), else_=0)),
                func.sum(row.prompt_tokens),
                func.sum(row.completion_tokens),
            )
            .group_by(row.tenant_id, day, row.model)
            .order_by(day, row.tenant_id, row.model)
        )
        query = self._window(query, tenant_id, since, until)
        return [
            UsageBucket(t, str(d), m, int(n), int(e or 0), int(p or 0), int(c or 0))
            for t, d, m, n, e, p, c in self.session.execute(query)
        ]

    def rows(
        self, tenant_id: str | None, since: datetime, until: datetime, *, limit: int, cursor: str | None
    ) -> Page[UsageRecord]:
        query = self._window(select(InferenceUsageRow), tenant_id, since, until)
        return paginate(self.session, query, InferenceUsageRow.id, to_record, limit=limit, cursor=cursor)

    @staticmethod
    def _window(query: SelectT, tenant_id: str | None, since: datetime, until: datetime) -> SelectT:
        row = InferenceUsageRow
        query = query.where(row.created_at >= since, row.created_at < until)
        return query if tenant_id is None else query.where(row.tenant_id == tenant_id)
