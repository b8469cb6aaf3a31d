"""Metered usage (compute, storage, builds): stored hourly per tenant and resource by the
sampler and the build step, read by tenants (their own) and operators.

A report covers whole UTC days (``since``..``until`` inclusive, like inference usage) and
lists each hour that has any usage. An hour's average of a gauge (memory, storage bytes) is
its byte-seconds over the hour's seconds (the current hour: those passed so far).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from control.clock import utcnow
from control.domain.metering import GAUGES, HOUR_S, KINDS
from control.store.database import Store
from control.store.repositories.metering import MeteringRepository

BUILDS_LISTED = 500


@dataclass(slots=True)
class MeteredHour:
    tenant_id: str
    hour: datetime
    amounts: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def covered_s(self, now: datetime) -> float:
        """The seconds of this hour that have passed (all of them, once it is over)."""
        return max(1.0, min(float(HOUR_S), (now - self.hour).total_seconds()))

    def average(self, resource: str, now: datetime) -> float:
        return self.amounts.get(resource, 0.0) / self.covered_s(now)


@dataclass(frozen=True, slots=True)
class BuildRecord:
    deployment_id: str
    tenant_id: str
    app_id: str
    status: str
    build_seconds: float
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MeteredReport:
    kind: str
    since: date
    until: date
    hours: list[MeteredHour]
    builds: list[BuildRecord]
    now: datetime

    def total(self, resource: str) -> float:
        return sum(h.amounts.get(resource, 0.0) for h in self.hours)

    def peak(self, resource: str) -> float:
        return max((h.peaks.get(resource, 0.0) for h in self.hours), default=0.0)


def _bounds(since: date, until: date) -> tuple[datetime, datetime]:
    return datetime.combine(since, time(), UTC), datetime.combine(until + timedelta(days=1), time(), UTC)


class MeteringService:
    def __init__(self, db: Store) -> None:
        self.db = db

    def record(self, items: Iterable[tuple[str, datetime, str, float, float]]) -> None:
        batch = list(items)
        if batch:
            with self.db.write_now() as session:
                MeteringRepository(session).add(batch)

    def totals(self) -> dict[tuple[str, str], float]:
        """(tenant, resource) -> all-time amount of the counters: what Prometheus counters start from."""
        with self.db.read() as session:
            return MeteringRepository(session).totals([r for r in KINDS["compute"] + KINDS["builds"] if r not in GAUGES])

    def report(self, kind: str, tenant_id: str | None, since: date, until: date) -> MeteredReport:
        """``tenant_id=None``: every tenant (operators only)."""
        first, last = _bounds(since, until)
        with self.db.read() as session:
            repo = MeteringRepository(session)
            rows = repo.hours(tenant_id, KINDS[kind], first, last)
            builds = repo.builds(tenant_id, first, last, limit=BUILDS_LISTED) if kind == "builds" else []
        hours: dict[tuple[str, datetime], MeteredHour] = {}
        for tenant, hour, resource, amount, peak in rows:
            entry = hours.setdefault((tenant, hour), MeteredHour(tenant, hour))
            entry.amounts[resource] = amount
            entry.peaks[resource] = peak
        return MeteredReport(kind, since, until, list(hours.values()), [BuildRecord(*b) for b in builds], utcnow())
