"""Inference usage: one row per gateway request; read by tenants (their own) and operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from control.domain.errors import Invalid
from control.domain.records import Page, UsageBucket, UsageRecord
from control.store.database import Store
from control.store.repositories.usage import UsageRepository

DEFAULT_DAYS = 31


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageSummary:
    since: date
    until: date  # inclusive
    buckets: list[UsageBucket]
    totals: UsageTotals


def day_window(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    until = until or today
    since = since or until - timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise Invalid("'since' must not be after 'until'.", errors=[{"field": "since", "message": "after until"}])
    return since, until


def _bounds(since: date, until: date) -> tuple[datetime, datetime]:
    return datetime.combine(since, time(), UTC), datetime.combine(until + timedelta(days=1), time(), UTC)


class UsageService:
    def __init__(self, db: Store) -> None:
        self.db = db

    def record(self, record: UsageRecord) -> None:
        # On its own, at once: the tokens were spent whatever becomes of the request's answer.
        with self.db.write_now() as session:
            UsageRepository(session).add(record)

    def tokens_since(self, tenant_id: str, since: datetime) -> int:
        with self.db.read() as session:
            return UsageRepository(session).tokens_since(tenant_id, since)

    def summary(self, tenant_id: str | None, since: date, until: date) -> UsageSummary:
        """``tenant_id=None``: every tenant (operators only)."""
        with self.db.read() as session:
            buckets = UsageRepository(session).buckets(tenant_id, *_bounds(since, until))
        totals = UsageTotals(
            requests=sum(b.requests for b in buckets),
            errors=sum(b.errors for b in buckets),
            prompt_tokens=sum(b.prompt_tokens for b in buckets),
            completion_tokens=sum(b.completion_tokens for b in buckets),
        )
        return UsageSummary(since, until, buckets, totals)

    def rows(self, tenant_id: str | None, since: date, until: date, *, limit: int, cursor: str | None) -> Page[UsageRecord]:
        with self.db.read() as session:
            return UsageRepository(session).rows(tenant_id, *_bounds(since, until), limit=limit, cursor=cursor)
