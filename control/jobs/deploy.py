"""The ``deploy`` job: source → build (``control.jobs.build``) → release → health-gated
swap → running.

Each step re-reads the cancel flag. A retried job (its worker died, or Docker went away
mid-step: ``control.jobs.workers.as_outage``) starts over: the Docker layer cache makes the
rebuild cheap, the release made by the first attempt is reused, and a leftover container of
the same name is replaced.

The swap of one app to its new release, with no downtime:

1. start the new container (sandboxed, tenant network, env passed at create, labels);
2. wait for its HTTP health check; on failure: log its last lines, remove it, and stop
   here: the route still points at the old release, which keeps serving;
3. switch the route (an atomic file write) and watch Traefik until it answers with the
   new release's ``X-Moorage-Release`` header;
4. record the new desired state, let in-flight requests to the old container drain, stop
   and remove the old container(s).

An app with volumes has one writer at a time: the old container that mounts them is stopped
(kept, not removed) *before* the new one starts, so there is a gap of a few seconds (stop,
start, health check, route switch) in which the app answers 502. Two containers could share
the mount (dockerd mounts a volume once), but not safely: a file lock taken in one gVisor
sandbox is not seen in another, so an app's own locking (SQLite's) would not keep two
releases from writing the same files at once. If the new one fails (or is cancelled), the
old container is started again and the route points back at it.

A cancel is honoured up to the route switch; once the route points at the new release the
swap runs to its end and the deployment ends ``running``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from control.domain.databases import CredentialsUnreadable
from control.domain.deployments import IMAGE, ROLLBACK, DeploymentService, Status
from control.domain.env import EnvService, SecretUnreadable
from control.domain.errors import NotFound
from control.domain.links import LinkedDatabaseGone, LinkService
from control.domain.previews import DatabasesPending, DatabasesUnavailable
from control.domain.records import App, Deployment, DesiredApp, Job, Release, ReleaseConfig
from control.domain.releases import ReleaseService
from control.domain.volumes import FULL, VolumeService, full_reason
from control.jobs.build import BuildLog, Cancelled, Failed, SourceBuild, check_step
from control.jobs.runtime_port import AppContainer, AppRuntime, RemovalRefused, Route, VolumeMount
from control.jobs.volumes import mounts_of
from control.jobs.workers import AppLocks, JobContext, RetryLater, as_outage
from control.settings import Settings
from runtime.volumes import VolumeError

log = structlog.get_logger("moorage.deploy")
DATABASE_WAIT_S = 2.0  # an app's databases still being made: its deploy looks again after this


@dataclass
class DeployPipeline:
    settings: Settings
    deployments: DeploymentService
    releases: ReleaseService
    env_vars: EnvService
    runtime: AppRuntime
    locks: AppLocks
    links: LinkService | None = None  # managed databases: URLs resolved at container start
    volumes: VolumeService | None = None  # app volumes: mounted at container start
    # Told once a release is live: the reconciler's pass then prunes the images (and build
    # layers) no kept release needs any more, rather than at the end of its interval.
    went_live: Callable[[], None] = lambda: None
    # Before anything of a deployment runs: raises ``DatabasesPending`` while the app's own
    # databases are still being made (a preview's, forked from a snapshot: the job runs again
    # later), ``DatabasesUnavailable`` once they could not be (the deployment fails).
    databases_ready: Callable[[str], None] = lambda app_id: None
    # Told of each build that ran (tenant id, start, end in epoch seconds): metering.
    built: Callable[[str, float, float], None] = lambda tenant_id, started, ended: None
    source_build: SourceBuild = field(init=False)

    def __post_init__(self) -> None:
        self.source_build = SourceBuild(self.settings, self.deployments, self.runtime, self.built)

    def __call__(self, job: Job, ctx: JobContext) -> None:
        dep = self.deployments.load(job.subject_id)
        if dep is None or dep.is_terminal:
            return
        out = BuildLog(Path(dep.log_path or self.deployments.log_path(dep.id)))
        if job.attempts > 1:
            out.step(f"retrying: attempt {job.attempts} of {job.max_attempts} (the previous worker stopped)")
        try:
            app, tenant = self._names(dep)
            check_step(self.deployments, dep.id, ctx)
            self._wait_for_databases(app, out)
            if dep.source_kind == ROLLBACK:
                image, tag = self._rollback_image(dep, out)
            elif dep.source_kind == IMAGE:
                image, tag = self._given_image(dep, out)
            else:
                image, tag = self.source_build.run(dep, job, app, tenant, out, ctx)
            self._release(dep, app, tenant, image, tag, out, ctx)
        except Cancelled:
            out.step("cancelled")
            self._never_live(dep.id)
            self.deployments.transition(dep.id, Status.CANCELLED, reason="cancelled by request")
        except Failed as exc:
            out.step(f"failed: {exc.reason}")
            self._never_live(dep.id)
            self.deployments.transition(dep.id, Status.FAILED, reason=exc.reason)
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise
            out.step(f"{outage.reason}; starting over in {outage.delay_s:.0f}s")
            raise outage from None
        finally:
            done = self.deployments.load(dep.id)
            if done is None or done.is_terminal:
                self._clean_up(dep.id)

    def _wait_for_databases(self, app: App, out: BuildLog) -> None:
        try:
            self.databases_ready(app.id)
        except DatabasesPending as exc:
            out.step(f"{exc}; starting in {DATABASE_WAIT_S:.0f}s")
            raise RetryLater(str(exc), delay_s=DATABASE_WAIT_S) from None
        except DatabasesUnavailable as exc:
            raise Failed(str(exc)) from None

    def give_up(self, job: Job, reason: str) -> None:
        self._never_live(job.subject_id)
        self.deployments.fail_if_active(job.subject_id, f"gave up after {job.attempts} attempt(s): {reason}")
        self._clean_up(job.subject_id)

    def _never_live(self, deployment_id: str) -> None:
        """A release that never served gives its number back (the next one takes it)."""
        with self.releases.db.write():
            if self.releases.discard_unreleased(deployment_id):
                self.deployments.update(deployment_id, release_id=None)

    def _clean_up(self, deployment_id: str) -> None:
        self.deployments.discard_source(deployment_id)
        try:
            self.runtime.remove_build_leftovers(self.deployments.workdir(deployment_id))
        except Exception as exc:  # noqa: BLE001 (Docker down: the note stays; nothing else depends on it)
            log.warning("build_leftovers_not_removed", deployment_id=deployment_id, error=f"{type(exc).__name__}: {exc}")

    # -- steps --------------------------------------------------------------------------
    def _names(self, dep: Deployment) -> tuple[App, str]:
        from control.domain.tenants import TenantService

        app = self.deployments.app(dep.tenant_id, dep.app_id, previews=True)
        return app, TenantService(self.deployments.db).get(dep.tenant_id).name

    def _rollback_image(self, dep: Deployment, out: BuildLog) -> tuple[str, str]:
        target = self.releases.get(dep.source["release_id"])
        if target is None:
            raise Failed(f"release {dep.source.get('release')} no longer exists")
        if not self.runtime.image_exists(target.image_id):
            raise Failed(f"the image of {target.name} was removed from this host; deploy that version from source")
        out.step(f"rollback to {target.name}: reusing image {target.image_id[:19]}, no build")
        self.deployments.transition(dep.id, Status.RELEASING, image=target.image_id)
        return target.image_id, target.image_tag

    def _given_image(self, dep: Deployment, out: BuildLog) -> tuple[str, str]:
        """An image the tenant already has (a snapshot's, for its fork): released as it is."""
        image, tag = str(dep.source["image_id"]), str(dep.source["image_tag"])
        if not self.runtime.image_exists(image):
            raise Failed(f"image {image[:19]} is no longer on this host; deploy the app from source")
        out.step(f"deploying image {image[:19]} ({tag}) as it is, no build")
        self.deployments.transition(dep.id, Status.RELEASING, image=image)
        return image, tag

    def _release(self, dep: Deployment, app: App, tenant: str, image: str, tag: str, out: BuildLog, ctx: JobContext) -> None:
        target = self.releases.get(dep.source["release_id"]) if dep.source_kind == ROLLBACK else None
        port = target.port if target else app.port
        health_path = target.health_check_path if target else app.health_check_path
        # A rollback runs with the config its target was made with, and makes it the app's
        # once it is live; a release made before releases kept their config gets today's.
        restoring = target.config if target is not None else None
        if target is not None and restoring is None:
            out.step(f"{target.name} was made before releases kept their config: it runs with the app's config of today")
        try:
            if restoring is not None:
                env_values = self.env_vars.open_config(dep.tenant_id, app.id, restoring)
                linked = self.links.resolve_config(dep.tenant_id, restoring.links) if self.links else {}
                config = restoring
            else:
                env_values, env_version, sealed = self.env_vars.current_config(dep.tenant_id, app.id)
                links = self.links.current(dep.tenant_id, app.id) if self.links else ()
                linked = self.links.resolve(dep.tenant_id, app.id) if self.links else {}  # a link wins over a same-named var
                config = ReleaseConfig(env_version, sealed, links)
        except (SecretUnreadable, CredentialsUnreadable, NotFound) as exc:  # NotFound: a kept version is gone
            raise Failed(exc.detail) from None
        except LinkedDatabaseGone as exc:
            raise Failed(f"cannot restore the config of {target.name if target else 'the release'}: {exc}") from None
        values = env_values | linked | {"PORT": str(port)}
        release = self.releases.create(
            tenant_id=dep.tenant_id,
            app_id=app.id,
            deployment_id=dep.id,
            image_id=image,
            image_tag=tag,
            env_version=config.env_version,
            port=port,
            health_check_path=health_path,
            rollback_of=target.id if target else None,
            config=config,
        )
        restored = f"the config of {target.name} ({config.summary()})" if restoring is not None and target else None
        out.step(
            f"release {release.name}: "
            + (f"restoring {restored}" if restored else f"env version {config.env_version} ({config.summary()})")
            + f", port {port}"
        )
        self.deployments.update(dep.id, release_id=release.id)
        check_step(self.deployments, dep.id, ctx)
        volumes = self.volumes.for_app(app.id) if self.volumes else []
        full = [v for v in volumes if v.status == FULL]
        if full:
            raise Failed(full_reason(app.name, full[0]))
        if volumes:
            out.step("volumes: " + ", ".join(f"{v.name} at {v.mount_path} ({v.size_mb} MiB, {v.quota})" for v in volumes))
        with self.locks.hold(app.id):
            plan = SwapPlan(
                tenant=tenant,
                app=app.name,
                app_id=app.id,
                deployment_id=dep.id,
                release=release,
                env=values,
                replicas=1 if volumes else app.replicas,  # one writer per volume
                volumes=mounts_of(volumes),
                previous=next(
                    iter(self.releases.desired(app.id)), None
                ),  # read holding the lock: the reconciler may have recreated it
            )
            timings = swap(
                self.runtime,
                plan,
                out,
                health_timeout=float(self.settings.health_timeout_s),
                verify_timeout=float(self.settings.route_verify_timeout_s),
                drain_s=self.settings.swap_drain_ms / 1000,
                make_current=lambda containers: self._go_live(release, containers, dep.tenant_id, restoring),
                cancelled=lambda: self.deployments.cancel_requested(dep.id),
            )
        self.deployments.record_timing(dep.id, start_s=timings.start_s, health_s=timings.health_s, route_s=timings.route_s)
        self.deployments.transition(dep.id, Status.RUNNING)
        out.step(f"running {release.name}")
        self.went_live()

    def _go_live(
        self, release: Release, containers: list[tuple[str, str]], tenant_id: str, restoring: ReleaseConfig | None
    ) -> None:
        # One unit of work: the release is current and, for a rollback, the app's config is
        # the one it runs with, together or not at all.
        with self.releases.db.write():
            self.releases.make_current(release, containers)
            if restoring is not None:
                self.env_vars.restore(tenant_id, release.app_id, restoring)


# -- the swap -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapPlan:
    tenant: str
    app: str
    app_id: str  # keys the route
    deployment_id: str
    release: Release
    env: dict[str, str]  # plaintext, in memory only: passed at create, never logged
    replicas: int = 1
    volumes: tuple[VolumeMount, ...] = ()  # the app's volumes, as they are now (a rollback does not roll data back)
    previous: DesiredApp | None = None  # what serves now: started again if the new release fails after it stopped


@dataclass(frozen=True)
class SwapTimings:
    start_s: float
    health_s: float
    route_s: float


def container_name(tenant: str, app: str, deployment_id: str) -> str:
    return f"moorage-{tenant}-{app}-{deployment_id}"


def replica_name(base: str, index: int) -> str:
    """The first replica keeps the deployment's container name; the others add their number."""
    return base if index == 0 else f"{base}-r{index + 1}"


def swap(
    rt: AppRuntime,
    plan: SwapPlan,
    log: BuildLog,
    *,
    health_timeout: float,
    verify_timeout: float,
    drain_s: float,
    make_current: Callable[[list[tuple[str, str]]], None],
    cancelled: Callable[[], bool],
) -> SwapTimings:
    """Start every replica of the new release and wait for each to pass its health check;
    then send the route to all of them at once, and only then stop the old containers. The
    route never points at a container that has not passed, nor at fewer than the old ones."""
    release = plan.release
    base = container_name(plan.tenant, plan.app, plan.deployment_id)
    stopped = _stop_other_writers(rt, plan, log)
    new: list[AppContainer] = []
    start_s = health_s = 0.0
    for index in range(plan.replicas):
        name = replica_name(base, index)
        started = time.monotonic()
        try:
            container = rt.start_app(
                tenant=plan.tenant,
                app=plan.app,
                release=release.name,
                image=release.image_id,
                env=plan.env,
                name=name,
                volumes=plan.volumes,
            )
        except VolumeError as exc:  # its data gone, or the host cannot attach it: not the app's fault, not an outage
            _remove_all(rt, new)
            again = _start_previous_again(rt, plan, stopped, log)
            raise Failed(f"{exc}; " + ("the previous release was started again" if again else "nothing was changed")) from None
        except Exception:
            _remove_all(rt, new)
            _start_previous_again(rt, plan, stopped, log)
            raise
        new.append(container)
        start_s += time.monotonic() - started
        log.step(
            f"started {name} at {container.ip} in {time.monotonic() - started:.2f}s; "
            f"health check GET {release.health_check_path} on port {release.port}"
        )
        health = rt.wait_healthy(container, port=release.port, path=release.health_check_path, timeout=health_timeout)
        health_s += health.elapsed
        if not health.ok or cancelled():
            tail = _last_lines(rt, container.id)
            for line in tail:
                log.line(f"[{release.name}] {line}")
            _remove_all(rt, new)
            again = _start_previous_again(rt, plan, stopped, log)
            if health.ok:
                raise Cancelled()
            serving = "the previous release was started again and serves" if again else "the previous release keeps serving"
            if stopped and not again:
                serving = "the previous release could not be started again (the reconciler retries)"
            raise Failed(
                f"health check GET {release.health_check_path} on port {release.port} did not pass within "
                f"{health_timeout:.0f}s ({health.detail}); {serving}. "
                "Last log lines of the new container:\n" + ("\n".join(tail) or "(none)")
            )
        log.step(f"{name} healthy after {health.elapsed:.2f}s ({health.detail})")
    log.step(f"{len(new)} of {plan.replicas} replica(s) healthy; switching the route")
    ours = {c.id for c in new}
    old = [c for c in rt.owned_apps(tenant=plan.tenant, app=plan.app) if c.id not in ours]
    switched = time.monotonic()
    route = Route.to(plan.app_id, plan.tenant, plan.app, new, release.port, release.name, release.health_check_path)
    rt.write_route(route)
    seen = rt.wait_served(route, verify_timeout)
    route_s = time.monotonic() - switched
    if seen is None:
        log.step(
            f"warning: Traefik did not answer with {release.name} within {verify_timeout}s "
            "(check MOORAGE_TRAEFIK_URL); the route file is written"
        )
    else:
        log.step(f"Traefik serves {release.name} after {seen:.2f}s")
    make_current([(c.id, c.name) for c in new])
    if any(c.running for c in old):
        time.sleep(drain_s)  # requests already sent to the old containers finish first
    for container in old:
        try:
            rt.stop_and_remove(container.id)
            log.step(f"stopped the previous container {container.name}")
        except RemovalRefused as exc:  # already gone or going: the new release is live either way
            log.step(f"previous container {container.name} not removed ({exc}); the reconciler will")
    return SwapTimings(start_s=start_s, health_s=health_s, route_s=route_s)


def _stop_other_writers(rt: AppRuntime, plan: SwapPlan, log: BuildLog) -> list[AppContainer]:
    """One writer per volume: the app's running containers that mount one of its volumes stop
    (and stay, to start again should the new release fail) before the new one starts."""
    ours = {v.volume_id for v in plan.volumes}
    if not ours:
        return []
    stopped = []
    for container in rt.owned_apps(tenant=plan.tenant, app=plan.app):
        if container.running and ours & set(container.volumes):
            rt.stop(container.id)
            stopped.append(container)
            log.step(
                f"stopped {container.name} first: a volume has one writer at a time, so the app answers 502 until {plan.release.name} serves"
            )
    return stopped


def _start_previous_again(rt: AppRuntime, plan: SwapPlan, stopped: list[AppContainer], log: BuildLog) -> bool:
    """The release that served before, back (its container started again, the route at it)."""
    previous = plan.previous
    if previous is None or previous.container_id not in {c.id for c in stopped}:
        return False
    try:
        again = rt.restart(previous.container_id)
        route = Route(plan.app_id, plan.tenant, plan.app, again.address(), previous.release.port, previous.release.name)
        rt.write_route(route)
    except Exception as exc:  # noqa: BLE001 (the deployment's reason must still be written; the reconciler restarts it)
        log.step(f"could not start {previous.container_name} again ({type(exc).__name__}: {exc}); the reconciler will")
        return False
    log.step(f"started {previous.container_name} again: {previous.release.name} serves")
    return True


def _remove_all(rt: AppRuntime, containers: list[AppContainer]) -> None:
    for container in containers:
        rt.remove(container.id)


def _last_lines(rt: AppRuntime, container_id: str, n: int = 20) -> list[str]:
    try:
        return rt.log_tail(container_id, n)
    except Exception as exc:  # noqa: BLE001 (the deployment's reason must still be written)
        return [f"(logs unavailable: {type(exc).__name__})"]
