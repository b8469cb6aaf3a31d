"""Per-tenant compute quotas: apps, replicas, CPU, memory, environments and build minutes per day.

An app holds compute from the moment a deployment of it is accepted until it is deleted:
``replicas`` containers, each with the CPU and memory limits Docker gives every app
container (``ComputeConfig.container_*``, the very numbers the runtime passes to Docker).
An app that was never deployed holds none. Build minutes are the time a tenant's
deployments spent ``building`` today (UTC), and a deploy that needs a build is refused once
they reach the limit; rollbacks build nothing and always go.

An environment (a sandbox) holds the CPU and memory it was created with from its create
until its row goes (deleted, or its lease ran out); a tenant has at most ``max_environments``
at once. Apps' and environments' CPU and memory count together against ``max_cpu`` and
``max_memory_mb``.

Each check runs in the caller's write transaction, beside the insert or update it guards:
two requests at once cannot both fit, and a refused one leaves nothing. A lower limit never
stops what runs: it refuses the next app, scale-up or deploy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import Invalid, NotFound, QuotaExceeded
from control.domain.records import ComputeOverrides, RunningApp
from control.store.database import Store
from control.store.repositories.compute import ComputeLimitsRepository, ComputeUsageRepository
from control.store.repositories.tenants import TenantRepository

BUILDING = "building"


@dataclass(frozen=True)
class ComputeConfig:
    """The platform defaults (``MOORAGE_TENANT_MAX_*``) and each app container's share."""

    max_apps: int = 20
    max_replicas: int = 20
    max_millicpus: int = 8000
    max_memory_mb: int = 16384
    build_minutes_per_day: int = 600
    max_environments: int = 10
    container_millicpus: int = 500
    container_memory_mb: int = 256


@dataclass(frozen=True)
class ComputeUsage:
    apps: int = 0
    replicas: int = 0
    millicpus: int = 0
    memory_mb: int = 0
    build_minutes_today: float = 0.0
    running: tuple[tuple[str, int], ...] = ()  # (app name, replicas) of each app holding compute
    environments: int = 0
    environment_millicpus: int = 0  # included in millicpus
    environment_memory_mb: int = 0  # included in memory_mb


@dataclass(frozen=True)
class ComputeLimits:
    max_apps: int
    max_replicas: int
    max_millicpus: int
    max_memory_mb: int
    build_minutes_per_day: int
    max_environments: int
    overrides: ComputeOverrides
    usage: ComputeUsage
    container_millicpus: int
    container_memory_mb: int


def cpus(millicpus: int) -> str:
    return f"{millicpus / 1000:g}"


def _raise_hint(tenant_id: str) -> str:
    return f"or ask an operator to raise it (PUT /v1/tenants/{tenant_id}/compute-limits)"


def build_seconds(transitions: list[dict[str, str]], since: datetime, now: datetime) -> float:
    """Seconds of one deployment's history spent ``building`` between ``since`` and ``now``."""
    total, started = 0.0, None
    for entry in transitions:
        at = datetime.fromisoformat(entry["at"])
        if entry.get("status") == BUILDING:
            started = at if started is None else started  # a retried build goes on from its first start
        elif started is not None:
            total += max(0.0, (min(at, now) - max(started, since)).total_seconds())
            started = None
    if started is not None:
        total += max(0.0, (now - max(started, since)).total_seconds())
    return total


class ComputeQuota:
    def __init__(self, db: Store, config: ComputeConfig, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.clock = clock

    # -- the operator's view ------------------------------------------------------------
    def limits(self, tenant_id: str) -> ComputeLimits:
        with self.db.read() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            return self._limits(session, tenant_id)

    def set_limits(self, tenant_id: str, overrides: ComputeOverrides) -> ComputeLimits:
        bad = [f.name for f in fields(overrides) if (v := getattr(overrides, f.name)) is not None and v < 0]
        if bad:
            raise Invalid("Limits cannot be negative.", errors=[{"field": f, "message": "0 or more"} for f in bad])
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            ComputeLimitsRepository(session).set(tenant_id, overrides)
            return self._limits(session, tenant_id)

    # -- checks, inside the caller's write transaction ------------------------------------
    def check_new_app(self, session: Session, tenant_id: str) -> None:
        limits = self._limits(session, tenant_id, with_builds=False)
        if limits.usage.apps + 1 > limits.max_apps:
            raise QuotaExceeded(
                f"Quota exceeded (max_apps): this tenant may have {limits.max_apps} app(s) and has {limits.usage.apps}. "
                f"Delete one with DELETE /v1/apps/{{app}}, {_raise_hint(tenant_id)}. Nothing was created."
            )

    def check_scale_up(self, session: Session, tenant_id: str, app_id: str, app_name: str, replicas: int) -> None:
        """More replicas for an app that runs; one that does not is checked at its first deploy."""
        if app_id in ComputeUsageRepository(session, tenant_id).running_apps():
            self.check_running(session, tenant_id, app_id, app_name, replicas)

    def check_first_deploy(self, session: Session, tenant_id: str, app_id: str, app_name: str, replicas: int) -> None:
        """An app that holds no compute yet starts to; a redeploy of a running one adds nothing."""
        if app_id not in ComputeUsageRepository(session, tenant_id).running_apps():
            self.check_running(session, tenant_id, app_id, app_name, replicas)

    def check_running(self, session: Session, tenant_id: str, app_id: str, app_name: str, replicas: int) -> None:
        """``app`` running ``replicas`` containers beside the tenant's other running apps must
        fit max_replicas, max_cpu and max_memory_mb."""
        limits = self._limits(session, tenant_id, with_builds=False)
        others = {i: a for i, a in ComputeUsageRepository(session, tenant_id).running_apps().items() if i != app_id}
        total = sum(a.replicas for a in others.values()) + replicas
        running = ", ".join(f"{a.name} ({a.replicas})" for a in others.values()) or "no other app"
        u = limits.usage
        if u.environments:
            running += (
                f"; {u.environments} environment(s) holding {cpus(u.environment_millicpus)} CPU and {u.environment_memory_mb} MiB"
            )
        what = f"app '{app_name}' running {replicas} replica(s)"
        c = self.config
        checks = (
            ("max_replicas", total, limits.max_replicas, str, "replica(s)"),
            ("max_cpu", total * c.container_millicpus + u.environment_millicpus, limits.max_millicpus, cpus, "CPU"),
            ("max_memory_mb", total * c.container_memory_mb + u.environment_memory_mb, limits.max_memory_mb, str, "MiB"),
        )
        for name, wanted, limit, show, unit in checks:
            if wanted > limit:
                raise QuotaExceeded(
                    f"Quota exceeded ({name}): {what} would make {show(wanted)} {unit} across the tenant's running apps, "
                    f"over its limit of {show(limit)} {unit} (each container gets {cpus(c.container_millicpus)} CPU and "
                    f"{c.container_memory_mb} MiB; running now: {running}). Ask for fewer replicas, scale down or delete "
                    f"another app, {_raise_hint(tenant_id)}. Nothing was changed."
                )

    def check_new_environment(self, session: Session, tenant_id: str, millicpus: int, memory_mb: int) -> None:
        """One more environment of this size must fit max_environments, max_cpu and max_memory_mb."""
        limits = self._limits(session, tenant_id, with_builds=False)
        u = limits.usage
        what = f"a new environment ({cpus(millicpus)} CPU, {memory_mb} MiB)"
        hint = f"Delete one (DELETE /v1/environments/{{env}}), ask for less, {_raise_hint(tenant_id)}. Nothing was created."
        if u.environments + 1 > limits.max_environments:
            raise QuotaExceeded(
                f"Quota exceeded (max_environments): this tenant may have {limits.max_environments} environment(s) at once "
                f"and has {u.environments}. {hint}"
            )
        checks = (
            ("max_cpu", u.millicpus + millicpus, limits.max_millicpus, cpus, "CPU"),
            ("max_memory_mb", u.memory_mb + memory_mb, limits.max_memory_mb, str, "MiB"),
        )
        for name, wanted, limit, show, unit in checks:
            if wanted > limit:
                raise QuotaExceeded(
                    f"Quota exceeded ({name}): {what} would make {show(wanted)} {unit} across the tenant's running apps and "
                    f"environments, over its limit of {show(limit)} {unit}. {hint}"
                )

    def check_build_minutes(self, session: Session, tenant_id: str) -> None:
        limits = self._limits(session, tenant_id)
        used = limits.usage.build_minutes_today
        if used >= limits.build_minutes_per_day:
            midnight = self._midnight() + timedelta(days=1)
            raise QuotaExceeded(
                f"Quota exceeded (build_minutes_per_day): this tenant's builds took {used:.1f} minute(s) today (UTC), "
                f"its limit is {limits.build_minutes_per_day}. Builds are allowed again at {midnight:%Y-%m-%dT%H:%MZ}; "
                f"a rollback (POST /v1/apps/{{app}}/rollback) needs no build. Or {_raise_hint(tenant_id).removeprefix('or ')}. "
                "Nothing was created."
            )

    # -- inside -------------------------------------------------------------------------------
    def _midnight(self) -> datetime:
        return self.clock().replace(hour=0, minute=0, second=0, microsecond=0)

    def _limits(self, session: Session, tenant_id: str, *, with_builds: bool = True) -> ComputeLimits:
        o = ComputeLimitsRepository(session).get(tenant_id)
        c = self.config
        usage_repo = ComputeUsageRepository(session, tenant_id)
        running: dict[str, RunningApp] = usage_repo.running_apps()
        replicas = sum(a.replicas for a in running.values())
        environments, env_millicpus, env_memory_mb = usage_repo.environments()
        minutes = 0.0
        if with_builds:
            since, now = self._midnight(), self.clock()
            minutes = sum(build_seconds(t, since, now) for t in usage_repo.build_transitions_since(since)) / 60
        return ComputeLimits(
            max_apps=c.max_apps if o.max_apps is None else o.max_apps,
            max_replicas=c.max_replicas if o.max_replicas is None else o.max_replicas,
            max_millicpus=c.max_millicpus if o.max_millicpus is None else o.max_millicpus,
            max_memory_mb=c.max_memory_mb if o.max_memory_mb is None else o.max_memory_mb,
            build_minutes_per_day=c.build_minutes_per_day if o.build_minutes_per_day is None else o.build_minutes_per_day,
            max_environments=c.max_environments if o.max_environments is None else o.max_environments,
            overrides=o,
            usage=ComputeUsage(
                apps=usage_repo.app_count(),
                replicas=replicas,
                millicpus=replicas * c.container_millicpus + env_millicpus,
                memory_mb=replicas * c.container_memory_mb + env_memory_mb,
                build_minutes_today=round(minutes, 2),
                running=tuple((a.name, a.replicas) for a in running.values()),
                environments=environments,
                environment_millicpus=env_millicpus,
                environment_memory_mb=env_memory_mb,
            ),
            container_millicpus=c.container_millicpus,
            container_memory_mb=c.container_memory_mb,
        )
