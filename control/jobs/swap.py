"""The health-gated, zero-downtime swap of one app to a new release:

1. start the new container (sandboxed, tenant network, env passed at create, labels);
2. wait for its HTTP health check; on failure: log its last lines, remove it, and stop
   here: the route still points at the old release, which keeps serving;
3. switch the Traefik route (atomic file write) and watch Traefik until it answers with
   the new release's ``X-Moorage-Release`` header;
4. record the new desired state, let in-flight requests to the old container drain, stop
   and remove the old container(s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from control.jobs.build_log import BuildLog
from control.jobs.runtime_port import AppRuntime, RemovalRefused, Route
from control.store.repositories.releases import Release


class SwapFailed(RuntimeError):
    """The new release did not become healthy; the old one still serves. ``reason`` says why."""


@dataclass(frozen=True)
class SwapPlan:
    tenant: str
    app: str
    app_id: str  # keys the route
    deployment_id: str
    release: Release
    env: dict[str, str]  # plaintext, in memory only: passed at create, never logged


@dataclass(frozen=True)
class SwapTimings:
    start_s: float
    health_s: float
    route_s: float


def container_name(tenant: str, app: str, deployment_id: str) -> str:
    return f"moorage-{tenant}-{app}-{deployment_id}"


def swap(rt: AppRuntime, plan: SwapPlan, log: BuildLog, *, health_timeout: float, verify_timeout: float,
         drain_s: float, make_current: Callable[[str, str], None], cancelled: Callable[[], bool]) -> SwapTimings:
    release = plan.release
    name = container_name(plan.tenant, plan.app, plan.deployment_id)
    started = time.monotonic()
    new = rt.start_app(tenant=plan.tenant, app=plan.app, release=release.name, image=release.image_id,
                       env=plan.env, name=name)
    start_s = time.monotonic() - started
    log.step(f"started {name} at {new.ip} in {start_s:.2f}s; health check GET {release.health_check_path} on port {release.port}")

    health = rt.wait_healthy(new, port=release.port, path=release.health_check_path, timeout=health_timeout)
    if not health.ok or cancelled():
        tail = _last_lines(rt, new.id)
        for line in tail:
            log.line(f"[{release.name}] {line}")
        rt.remove(new.id)
        if health.ok:
            raise _Cancelled()
        raise SwapFailed(
            f"health check GET {release.health_check_path} on port {release.port} did not pass within "
            f"{health_timeout:.0f}s ({health.detail}); the previous release keeps serving. "
            "Last log lines of the new container:\n" + ("\n".join(tail) or "(none)")
        )
    log.step(f"healthy after {health.elapsed:.2f}s ({health.detail}); switching the route")
    old = [c for c in rt.owned_apps(tenant=plan.tenant, app=plan.app) if c.id != new.id]
    switched = time.monotonic()
    route = Route(plan.app_id, plan.tenant, plan.app, new.address(), release.port, release.name)
    rt.write_route(route)
    seen = rt.wait_served(route, verify_timeout)
    route_s = time.monotonic() - switched
    if seen is None:
        log.step(f"warning: Traefik did not answer with {release.name} within {verify_timeout}s "
                 "(check MOORAGE_TRAEFIK_URL); the route file is written")
    else:
        log.step(f"Traefik serves {release.name} after {seen:.2f}s")
    make_current(new.id, name)
    if old:
        time.sleep(drain_s)  # requests already sent to the old container finish first
    for container in old:
        try:
            rt.stop_and_remove(container.id)
            log.step(f"stopped the previous container {container.name}")
        except RemovalRefused as exc:  # already gone or going: the new release is live either way
            log.step(f"previous container {container.name} not removed ({exc}); the reconciler will")
    return SwapTimings(start_s=start_s, health_s=health.elapsed, route_s=route_s)


class _Cancelled(Exception):
    pass


SwapCancelled = _Cancelled


def _last_lines(rt: AppRuntime, container_id: str, n: int = 20) -> list[str]:
    try:
        return rt.log_tail(container_id, n)
    except Exception as exc:  # the reason should still be written
        return [f"(logs unavailable: {type(exc).__name__})"]
