"""Hourly metered usage (``metered_usage``): added to in batches, read aggregated."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.store.models import DeploymentRow, MeteredUsageRow


class MeteringRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, items: Iterable[tuple[str, datetime, str, float, float]]) -> None:
        """Each (tenant, hour, resource, amount, peak): amounts add up, the peak is the highest."""
        for tenant_id, hour, resource, amount, peak in items:
            row = self.session.get(MeteredUsageRow, (tenant_id, hour, resource))
            if row is None:
                self.session.add(MeteredUsageRow(tenant_id=tenant_id, hour=hour, resource=resource, amount=amount, peak=peak))
            else:
                row.amount += amount
                row.peak = max(row.peak, peak)
        self.session.flush()

    def hours(
        self, tenant_id: str | None, resources: Collection[str], since: datetime, until: datetime
    ) -> list[tuple[str, datetime, str, float, float]]:
        row = MeteredUsageRow
        query = (
            select(row.tenant_id, row.hour, row.resource, row.amount, row.peak)
            .where(row.resource.in_(list(resources)), row.hour >= since, row.hour < until)
            .order_by(row.hour, row.tenant_id, row.resource)
        )
        if tenant_id is not None:
            query = query.where(row.tenant_id == tenant_id)
        return [(t, h, r, float(a), float(p)) for t, h, r, a, p in self.session.execute(query)]

    def totals(self, resources: Collection[str]) -> dict[tuple[str, str], float]:
        """(tenant, resource) -> amount over all time."""
        row = MeteredUsageRow
        query = (
            select(row.tenant_id, row.resource, func.sum(row.amount))
            .where(row.resource.in_(list(resources)))
            .group_by(row.tenant_id, row.resource)
        )
        return {(t, r): float(a or 0) for t, r, a in self.session.execute(query)}

    def builds(
        self, tenant_id: str | None, since: datetime, until: datetime, *, limit: int
    ) -> list[tuple[str, str, str, str, float, datetime]]:
        """The newest ``limit`` deployments made in the window that built something:
        (id, tenant, app, status, build seconds, created_at), oldest first."""
        row = DeploymentRow
        query = (
            select(row.id, row.tenant_id, row.app_id, row.status, row.timings, row.created_at)
            .where(row.created_at >= since, row.created_at < until, row.timings.contains('"build_s"'))
            .order_by(row.created_at.desc(), row.id.desc())
            .limit(limit)
        )
        if tenant_id is not None:
            query = query.where(row.tenant_id == tenant_id)
        found = [
            (i, t, a, s, float(json.loads(timings or "{}").get("build_s", 0.0)), c)
            for i, t, a, s, timings, c in self.session.execute(query)
        ]
        return found[::-1]
