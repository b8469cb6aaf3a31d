"""The reconciler: on start and every ``interval_s``, for each app with a current release:

- its container is missing → recreate it from the release (env resolved in memory, its
  volumes mounted);
- its container is not running → start it again, with exponential backoff per app so a
  crash-looping app is not hammered;
- its route file is missing or stale (e.g. the container's IP changed) → rewrite it;

and remove *orphans*, what no live app and no in-progress deployment accounts for:

- app containers carrying moorage's labels **and this control plane's instance id**;
- route files this control plane wrote (their first line names its instance id), e.g. of a
  deleted app, so a hostname never keeps pointing at an IP another container may get;
- route files of the code before routes were keyed by app id (`tenant--app.yml`) whose tenant
  is one of ours: a live app's is replaced by its id-keyed file, any other is removed;
- tenant networks it created whose tenant is gone (and that nothing uses any more);
- build networks it created (one per build, removed when the build ends) whose deployment
  is no longer in flight: what a build cut off mid-step (process killed) left;
- images built for a live tenant that no release it keeps needs: each app keeps the images
  of its ``kept_releases`` newest releases (what a rollback reuses) and of its current one,
  and a deployment in flight keeps the image it builds or rolls back to; a deleted app's
  images therefore all go. A deleted tenant's images go with its delete;
- untagged build layers of a live tenant's builds (a failed or stopped build's steps, a
  multi-stage build's earlier stages), once older than ``build_layer_grace_s`` (a retry or
  a rebuild reuses them until then), and never while a deployment of that tenant is in
  flight: its build may be about to build on one. Kept releases' layers are their parents,
  never untagged heads, so a warm rebuild keeps its cache;
- app volume storage (Docker volumes, image files, loop devices) of this control plane that
  no volume accounts for, once past a grace period (a create in flight makes its storage
  before its row commits);
- the further sweeps it was built with (database containers).

Before all of that it deletes what has run out (``expiries``: previews past their TTL),
through the app teardown, so an expired preview is never recreated first; the expiry is
stored, so this holds across a restart too.

It also measures what each app volume holds (``used_mb``); a measured volume over its size
turns ``full`` (deploys refused) and ``ready`` again once under.

Containers and files without our marks are never touched. Apps with a deployment in flight
are skipped (the swap owns them until it finishes).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog

from control.domain.deployments import DeploymentService
from control.domain.env import EnvService
from control.domain.links import LinkService
from control.domain.records import DesiredApp
from control.domain.releases import ReleaseService
from control.jobs.deploy import container_name, replica_name
from control.jobs.runtime_port import AppContainer, AppRuntime, RemovalRefused, Route
from control.jobs.volumes import VolumeUpkeep
from control.jobs.workers import AppLocks
from runtime.router import legacy_owners

log = structlog.get_logger("moorage.reconcile")
MAX_BACKOFF_S = 300.0
CLOCK_SLACK_S = 2.0  # the engine's clock and ours (one host), and a step committed as it is listed


@dataclass
class Report:
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False


@dataclass(frozen=True)
class PassRecord:
    """The last pass, for operators (GET /v1/operator/health)."""

    at: float  # wall clock, when it ended
    duration_s: float
    report: Report


@dataclass
class _Backoff:
    failures: int = 0
    next_at: float = 0.0


class Reconciler:
    def __init__(
        self,
        releases: ReleaseService,
        deployments: DeploymentService,
        env_vars: EnvService,
        runtime: AppRuntime,
        locks: AppLocks,
        *,
        interval_s: float,
        base_backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        links: LinkService | None = None,
        tenant_names: Callable[[], set[str]] = set,
        tenant_ids: Callable[[], set[str]] = set,
        build_layer_grace_s: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
        drain_s: float = 1.0,
        sweeps: Mapping[str, Callable[[], list[str]]] | None = None,
        volumes: VolumeUpkeep | None = None,
        expiries: Mapping[str, Callable[[], list[str]]] | None = None,
    ) -> None:
        self.releases = releases
        self.deployments = deployments
        self.env_vars = env_vars
        self.runtime = runtime
        self.locks = locks
        self.links = links
        self.interval_s = interval_s
        self.base_backoff_s = base_backoff_s
        self.clock = clock
        self.tenant_names = tenant_names
        self.tenant_ids = tenant_ids
        self.build_layer_grace_s = build_layer_grace_s
        self.wall_clock = wall_clock  # compared with the engine's image creation times
        self.drain_s = drain_s  # a scaled-down replica keeps serving this long after leaving the route
        self._sweeps = dict(sweeps or {})  # further sweeps, each returning what it removed
        self.volumes = volumes
        # What runs out (previews' TTLs): deleted first in each pass, each returning what it deleted.
        self._expiries = dict(expiries or {})
        self._backoff: dict[str, _Backoff] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_pass: PassRecord | None = None

    # -- one pass -------------------------------------------------------------------------
    def run_once(self) -> Report:
        started = time.monotonic()
        report = self._pass()
        self.last_pass = PassRecord(self.wall_clock(), time.monotonic() - started, report)
        return report

    def _pass(self) -> Report:
        report = Report()
        for name, expire in self._expiries.items():  # first, and even with nothing started: a TTL is the database's
            self._guarded(report, f"expired {name}", lambda expire=expire: report.actions.extend(expire()))  # type: ignore[misc]
        # Nothing was ever started by this instance (no instance id yet): nothing to compare,
        # and no reason to talk to Docker at all.
        if not self.runtime.ever_started_anything():
            report.skipped = True
            return report
        active = self.deployments.active()
        busy_apps = {d.app_id for d in active}
        for desired in self.releases.desired():
            if desired.app_id in busy_apps:
                continue
            with self.locks.try_hold(desired.app_id) as held:
                if held:
                    self._guarded(report, desired.app_name, lambda d=desired: self._converge(d, report))  # type: ignore[misc]
        self._guarded(report, "orphans", lambda: self._remove_orphans(report))
        self._guarded(report, "orphan routes", lambda: self._remove_orphan_routes(report))
        self._guarded(report, "orphan networks", lambda: self._remove_orphan_networks(report))
        self._guarded(report, "orphan build networks", lambda: self._remove_orphan_build_networks(report))
        self._guarded(report, "old images", lambda: self._remove_unkept_images(report))
        self._guarded(report, "build layers", lambda: self._remove_build_layers(report))
        if self.volumes is not None:
            upkeep = self.volumes
            self._guarded(report, "orphan volumes", partial(_run_sweep, report, "app volumes", upkeep.remove_orphans))
            self._guarded(report, "volume usage", lambda: report.actions.extend(upkeep.measure()))
        for name, sweep in self._sweeps.items():
            self._guarded(report, name, partial(_run_sweep, report, name, sweep))
        if report.actions:
            log.info("reconciled", actions=report.actions)
        return report

    def _guarded(self, report: Report, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 (one app's trouble must not stop the pass for the others)
            report.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            log.warning("reconcile_failed", target=what, error=f"{type(exc).__name__}: {exc}")

    def _converge(self, d: DesiredApp, report: Report) -> None:
        """Every replica running (restarted, or recreated from the release, with backoff),
        as many as the app asks for (a changed ``replicas`` scales here), and the route
        balancing over the running ones."""
        rt = self.runtime
        base = container_name(d.tenant_name, d.app_name, d.release.deployment_id)
        names = [replica_name(base, index) for index in range(d.replicas)]
        recorded = {name: container_id for container_id, name in d.replica_containers}
        if d.container_name not in names[:1] and d.container_name in recorded:  # named before replicas: it is the first
            names[0] = d.container_name
        backoff = self._backoff.setdefault(d.app_id, _Backoff())
        found = {name: rt.inspect(recorded[name]) if name in recorded else None for name in names}
        due = self.clock() >= backoff.next_at
        if all(info is not None and info.running for info in found.values()):
            backoff.failures = 0
        elif due:
            backoff.failures += 1
            backoff.next_at = self.clock() + min(MAX_BACKOFF_S, self.base_backoff_s * 2 ** (backoff.failures - 1))
        running: list[AppContainer] = []
        for name, info in found.items():
            if info is None or not info.running:
                if not due:
                    continue
                if info is None:
                    info = self._recreate(d, name)
                    report.actions.append(f"recreated {d.tenant_name}/{d.app_name} ({d.release.name}) as {name}")
                else:
                    info = rt.restart(info.id)
                    report.actions.append(f"restarted {d.tenant_name}/{d.app_name} ({d.release.name})")
            running.append(info)
        surplus = [(name, container_id) for name, container_id in recorded.items() if name not in found]
        if not running:
            return  # nothing to route to yet: the route keeps what it had
        kept = [(c.id, c.name) for c in running]
        if surplus or kept != list(d.replica_containers):
            self.releases.set_containers(d.app_id, kept)
        route = Route.to(
            d.app_id, d.tenant_name, d.app_name, running, d.release.port, d.release.name, d.release.health_check_path
        )
        if not rt.route_is(route):
            rt.write_route(route)
            report.actions.append(f"route rewritten {d.tenant_name}/{d.app_name} -> {', '.join(route.ips)}")
        if surplus:  # scaled down: off the route first, then a grace period, then stopped
            time.sleep(self.drain_s)
        for name, container_id in surplus:
            with contextlib.suppress(RemovalRefused):  # already gone
                rt.stop_and_remove(container_id)
            report.actions.append(f"removed replica {name} of {d.tenant_name}/{d.app_name} (replicas: {d.replicas})")

    def _recreate(self, d: DesiredApp, name: str) -> AppContainer:
        # The config the release was made with (an env change since is the next deploy's),
        # or, for a release from before releases kept it, the app's of today.
        config = d.release.config
        if config is not None:
            env = self.env_vars.open_config(d.tenant_id, d.app_id, config)
            linked = self.links.resolve_config(d.tenant_id, config.links) if self.links else {}
        else:
            env = self.env_vars.resolve(d.tenant_id, d.app_id)
            linked = self.links.resolve(d.tenant_id, d.app_id) if self.links else {}
        values = env | linked | {"PORT": str(d.release.port)}
        return self.runtime.start_app(
            tenant=d.tenant_name,
            app=d.app_name,
            release=d.release.name,
            image=d.release.image_id,
            env=values,
            name=name,
            volumes=self.volumes.mounts(d.app_id) if self.volumes else (),
        )

    def _remove_orphans(self, report: Report) -> None:
        # Containers first, then the database: a container listed here was created before
        # these reads, so its deployment is either still active or already recorded.
        owned = self.runtime.owned_apps()
        active = self.deployments.active()
        active_ids, busy_apps = {d.id for d in active}, {d.app_id for d in active}
        desired = self.releases.desired()
        wanted = {container_id for d in desired for container_id, _ in d.replica_containers}
        app_ids = {(d.tenant_name, d.app_name): d.app_id for d in desired}
        for container in owned:
            if container.id in wanted or any(dep in container.name for dep in active_ids):
                continue
            app_id = app_ids.get((container.tenant, container.app))
            if app_id in busy_apps:
                continue  # a swap in progress stops its old container itself
            with self.locks.try_hold(app_id or container.id) as held:
                if held:
                    self.runtime.remove(container.id)
                    report.actions.append(f"removed orphan {container.name}")

    def _remove_orphan_routes(self, report: Report) -> None:
        # Files first, then the database, as for containers: a file listed here was written
        # before these reads, so its deployment is either still active or already recorded.
        rt = self.runtime
        owned, legacy = rt.owned_routes(), rt.legacy_routes()
        busy_apps = {d.app_id for d in self.deployments.active()}
        desired = self.releases.desired()
        live = {d.app_id for d in desired} | busy_apps
        for key in owned:
            if key in live:
                continue
            with self.locks.try_hold(key) as held:
                if held and rt.remove_route(key):
                    report.actions.append(f"removed orphan route {key}")
        if not legacy:
            return
        ours, serving = self.tenant_names(), {(d.tenant_name, d.app_name) for d in desired}
        for stem in legacy:
            owners = legacy_owners(stem)
            if not any(tenant in ours for tenant, _ in owners) or any(owner in serving for owner in owners):
                continue  # not ours, or a live app's: its converge replaces the file
            if rt.remove_legacy_route(stem):
                report.actions.append(f"removed orphan route {stem} (written before id keys)")

    def _remove_orphan_networks(self, report: Report) -> None:
        live = self.tenant_names()
        for tenant in self.runtime.owned_networks():
            if tenant not in live and self.runtime.remove_network(tenant):
                report.actions.append(f"removed orphan network of {tenant}")

    def _remove_orphan_build_networks(self, report: Report) -> None:
        # Networks first, then the deployments: a network listed here was made before these
        # reads, so its deployment is either still in flight or over for good.
        owned = self.runtime.owned_build_networks()
        in_flight = {d.id for d in self.deployments.active()}
        for name, deployment_id in owned.items():
            if deployment_id not in in_flight and self.runtime.remove_build_network(name):
                report.actions.append(f"removed orphan build network {name} (deployment {deployment_id})")

    def _remove_unkept_images(self, report: Report) -> None:
        # The deployments in flight first, then the images: an image listed here was built
        # before these reads, so its deployment is either still active or has made its release.
        active = self.deployments.active()
        in_flight = {d.id for d in active}
        kept = self.releases.kept_images()
        for dep in active:
            if dep.source_kind == "rollback" and (target := self.releases.get(dep.source.get("release_id", ""))):
                kept.add(target.image_id)
        live = sorted(self.tenant_ids())
        for image in self.runtime.tenant_images(*live):
            if image.id in kept or image.deployment_ids() & in_flight:
                continue
            if self.runtime.remove_image(image.id):
                report.actions.append(f"removed image {image.tags[0]}")
        for image in self.runtime.orphan_images(live):  # a deleted tenant's, its teardown cut short
            if self.runtime.remove_image(image.id):
                report.actions.append(f"removed image {image.tags[0]} (its tenant is gone)")

    def _remove_build_layers(self, report: Report) -> None:
        # The time first, then the deployments in flight, then the layers: a layer listed here
        # that a build in flight made is its tenant's (skipped) or newer than the cut-off.
        cutoff = self.wall_clock() - self.build_layer_grace_s - CLOCK_SLACK_S
        building = {d.tenant_id for d in self.deployments.active()}
        idle = sorted(self.tenant_ids() - building)
        for layer in self.runtime.build_layers(*idle):
            if layer.created < cutoff and self.runtime.remove_image(layer.id):
                report.actions.append(f"removed build layer {layer.id[:19]} of tenant {layer.tenant_id}")

    # -- the loop -------------------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="moorage-reconciler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now rather than at the end of the interval (a changed replica count)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 (a failed pass must not end the loop; the next one runs)
                log.warning("reconcile_pass_failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return


def _run_sweep(report: Report, name: str, sweep: Callable[[], list[str]]) -> None:
    report.actions.extend(f"removed orphan {what} ({name})" for what in sweep())
