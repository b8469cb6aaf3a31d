"""Per-tenant compute quotas and what a tenant uses against them, as stored."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from control.domain.records import ACTIVE_STATUSES, ComputeOverrides, RunningApp
from control.store.models import AppRow, AppRuntimeRow, DeploymentRow, EnvironmentRow, TenantComputeLimitsRow

_FIELDS = ("max_apps", "max_replicas", "max_millicpus", "max_memory_mb", "build_minutes_per_day", "max_environments")


class ComputeLimitsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> ComputeOverrides:
        row = self.session.get(TenantComputeLimitsRow, tenant_id)
        return ComputeOverrides() if row is None else ComputeOverrides(**{f: getattr(row, f) for f in _FIELDS})

    def set(self, tenant_id: str, overrides: ComputeOverrides) -> ComputeOverrides:
        row = self.session.get(TenantComputeLimitsRow, tenant_id)
        if row is None:
            row = TenantComputeLimitsRow(tenant_id=tenant_id)
            self.session.add(row)
        for name in _FIELDS:
            setattr(row, name, getattr(overrides, name))
        self.session.flush()
        return overrides


class ComputeUsageRepository:
    """What one tenant holds: its apps, those that run (and so hold CPU and memory), and
    the time its builds took."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def app_count(self) -> int:
        query = select(func.count()).select_from(AppRow).where(AppRow.tenant_id == self.tenant_id)
        return int(self.session.scalar(query) or 0)

    def running_apps(self) -> dict[str, RunningApp]:
        """By app id: apps with a current release or a deployment not yet ended."""
        in_flight = select(DeploymentRow.app_id).where(
            DeploymentRow.tenant_id == self.tenant_id, DeploymentRow.status.in_(ACTIVE_STATUSES)
        )
        released = select(AppRuntimeRow.app_id).where(AppRuntimeRow.tenant_id == self.tenant_id)
        query = (
            select(AppRow.id, AppRow.name, AppRow.replicas)
            .where(AppRow.tenant_id == self.tenant_id)
            .where(or_(AppRow.id.in_(in_flight), AppRow.id.in_(released)))
            .order_by(AppRow.name)
        )
        return {app_id: RunningApp(name, int(replicas)) for app_id, name, replicas in self.session.execute(query)}

    def environments(self) -> tuple[int, int, int]:
        """(environments, millicpus, memory MiB) the tenant's environments hold now."""
        query = select(
            func.count(),
            func.coalesce(func.sum(EnvironmentRow.millicpus), 0),
            func.coalesce(func.sum(EnvironmentRow.memory_mb), 0),
        ).where(EnvironmentRow.tenant_id == self.tenant_id)
        count, millicpus, memory_mb = self.session.execute(query).one()
        return int(count), int(millicpus), int(memory_mb)

    def build_transitions_since(self, since: datetime) -> list[list[dict[str, str]]]:
        """The state histories of the tenant's deployments that changed since ``since`` or
        have not ended (one building since before then)."""
        query = select(DeploymentRow.transitions).where(
            DeploymentRow.tenant_id == self.tenant_id,
            or_(DeploymentRow.updated_at >= since, DeploymentRow.status.in_(ACTIVE_STATUSES)),
        )
        return [json.loads(raw or "[]") for raw in self.session.scalars(query)]
