"""The ``deploy`` job: source → build → release → health-gated swap → running.

Each step re-reads the cancel flag. A retried job (its worker died, or Docker went away
mid-step: ``control.jobs.outages``) starts over: the Docker layer cache makes the rebuild
cheap, the release made by the first attempt is reused, and a leftover container of the
same name is replaced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from control.domain.build_policy import BuildPolicy, DockerfileRefused
from control.domain.databases import CredentialsUnreadable
from control.domain.deployment_states import Status
from control.domain.deployments import DeploymentService
from control.domain.env import EnvService, SecretUnreadable
from control.domain.errors import Invalid
from control.domain.git_sources import (
    GitHostRefused,
    check_git_source,
    curl_resolve_entries,
    resolve_git_host,
)
from control.domain.links import LinkService
from control.domain.releases import ReleaseService
from control.jobs.build_log import BuildLog
from control.jobs.locks import AppLocks
from control.jobs.outages import as_outage
from control.jobs.runtime_port import AppRuntime
from control.jobs.source import SourceError, clone
from control.jobs.swap import SwapCancelled, SwapFailed, SwapPlan, swap
from control.jobs.workers import JobContext
from control.settings import Settings
from control.store.records import App
from control.store.repositories.deployments import Deployment
from control.store.repositories.jobs import Job
from runtime.builders import (
    BuildCancelled,
    BuildError,
    BuilderUnavailable,
    BuildRequest,
    BuildTimeout,
    select_builder,
)

log = structlog.get_logger("moorage.deploy")


def tenant_repository(tenant_id: str) -> str:
    """Where a tenant's images are tagged; the build policy lets it build FROM these only. By
    id, not name: a tenant made later under a deleted one's name must not reach its images."""
    return f"moorage-apps/{tenant_id}/"


class Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cancelled(Exception):
    pass


@dataclass
class DeployPipeline:
    settings: Settings
    deployments: DeploymentService
    releases: ReleaseService
    env_vars: EnvService
    runtime: AppRuntime
    locks: AppLocks
    links: LinkService | None = None  # managed databases: URLs resolved at container start

    def __call__(self, job: Job, ctx: JobContext) -> None:
        dep = self.deployments.load(job.subject_id)
        if dep is None or dep.is_terminal:
            return
        out = BuildLog(Path(dep.log_path or self.deployments.log_path(dep.id)))
        if job.attempts > 1:
            out.step(f"retrying: attempt {job.attempts} of {job.max_attempts} (the previous worker stopped)")
        try:
            app, tenant = self._names(dep)
            self._check(dep.id, ctx)
            image, tag = self._rollback_image(dep, out) if dep.source_kind == "rollback" else self._build(dep, job, app, tenant, out, ctx)
            self._release(dep, app, tenant, image, tag, out, ctx)
        except Cancelled:
            out.step("cancelled")
            self.deployments.transition(dep.id, Status.CANCELLED, reason="cancelled by request")
        except Failed as exc:
            out.step(f"failed: {exc.reason}")
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

    def give_up(self, job: Job, reason: str) -> None:
        self.deployments.fail_if_active(job.subject_id, f"gave up after {job.attempts} attempt(s): {reason}")
        self._clean_up(job.subject_id)

    def _clean_up(self, deployment_id: str) -> None:
        self.deployments.discard_source(deployment_id)
        try:
            self.runtime.remove_build_leftovers(self.deployments.workdir(deployment_id))
        except Exception as exc:  # Docker down: the note stays; nothing else depends on it
            log.warning("build_leftovers_not_removed", deployment_id=deployment_id, error=f"{type(exc).__name__}: {exc}")

    # -- steps --------------------------------------------------------------------------
    def _names(self, dep: Deployment) -> tuple[App, str]:
        from control.domain.tenants import TenantService

        app = self.deployments.app(dep.tenant_id, dep.app_id)
        return app, TenantService(self.deployments.db).get(dep.tenant_id).name

    def _check(self, deployment_id: str, ctx: JobContext) -> None:
        if ctx.lease_lost.is_set():
            raise RuntimeError("lease lost: another worker owns this job now")
        if self.deployments.cancel_requested(deployment_id):
            raise Cancelled()

    def _build(self, dep: Deployment, job: Job, app: App, tenant: str, out: BuildLog, ctx: JobContext) -> tuple[str, str]:
        self.deployments.transition(dep.id, Status.BUILDING, reason=f"attempt {job.attempts}" if job.attempts > 1 else None)
        workdir = self.deployments.workdir(dep.id)
        if removed := self.runtime.remove_build_leftovers(workdir):
            out.step(f"removed {len(removed)} step container(s) the interrupted attempt left: {', '.join(removed)}")
        src = workdir / "src"
        if dep.source_kind == "git":
            out.step(f"cloning {dep.source['url']} at {dep.source['ref']}")
            self._clone(dep, src, out)
        elif not src.is_dir():
            raise Failed("the uploaded source is no longer on disk; upload it again")
        choice = select_builder(app.builder, src)
        tag = f"{tenant_repository(dep.tenant_id)}{app.name}:{dep.id}"
        out.step(f"building with {choice} (app builder: {app.builder}) as {tag}")
        policy = BuildPolicy(allowed_images=self.settings.allowed_images, own_repository=tenant_repository(dep.tenant_id),
                             lineage=dep.tenant_id)

        def checked(dockerfile: str) -> str:
            text = policy.check(dockerfile)
            out.step("build policy: the Dockerfile's images and sources are allowed; cache lineage: this tenant's own")
            return text

        last_check = [0.0]

        def cancelled() -> bool:  # per log line, but the database is asked at most twice a second
            if time.monotonic() - last_check[0] < 0.5:
                return False
            last_check[0] = time.monotonic()
            return ctx.lease_lost.is_set() or self.deployments.cancel_requested(dep.id)

        started = time.monotonic()
        request = BuildRequest(source=src, tag=tag, tenant=tenant, app=app.name, timeout=float(self.settings.build_timeout_s),
                               on_line=out.line, cancelled=cancelled, work_dir=workdir,
                               prepare_dockerfile=checked)
        try:
            built = self.runtime.build_image(choice, request)
        except BuilderUnavailable as exc:
            raise Failed(str(exc)) from None
        except DockerfileRefused as exc:
            raise Failed(exc.reason) from None
        except BuildTimeout:
            raise Failed(f"the build exceeded its time limit of {self.settings.build_timeout_s}s") from None
        except BuildError as exc:
            raise Failed(f"the build failed: {exc}") from None
        except BuildCancelled:
            self._check(dep.id, ctx)
            raise Cancelled() from None
        self.deployments.record_timing(dep.id, build_s=time.monotonic() - started)
        out.step(f"built {built.image_id[:19]} in {time.monotonic() - started:.2f}s")
        self._check(dep.id, ctx)
        self.deployments.transition(dep.id, Status.RELEASING, builder=choice, image=built.image_id)
        return built.image_id, tag

    def _clone(self, dep: Deployment, src: Path, out: BuildLog) -> None:
        """The policy again, just before cloning (the source may predate it, and DNS may
        answer differently now than when the API checked): git is pinned to what passed."""
        url, ref = dep.source["url"], dep.source["ref"]
        try:
            target = check_git_source(url, ref, allow_http=self.settings.git_allow_http)
            addresses = resolve_git_host(target, self.settings.git_networks)
        except Invalid as exc:
            raise Failed(exc.detail) from None
        except GitHostRefused as exc:
            raise Failed(str(exc)) from None
        out.step(f"git host {target.host} resolves to {', '.join(addresses)}: allowed; fetching from exactly that")
        try:
            clone(url, ref, src, timeout=self.settings.git_timeout_s, max_bytes=self.settings.max_source_bytes,
                  pins=curl_resolve_entries(target, addresses), allow_http=self.settings.git_allow_http)
        except SourceError as exc:
            raise Failed(str(exc)) from None

    def _rollback_image(self, dep: Deployment, out: BuildLog) -> tuple[str, str]:
        target = self.releases.get(dep.source["release_id"])
        if target is None:
            raise Failed(f"release {dep.source.get('release')} no longer exists")
        if not self.runtime.image_exists(target.image_id):
            raise Failed(f"the image of {target.name} was removed from this host; deploy that version from source")
        out.step(f"rollback to {target.name}: reusing image {target.image_id[:19]}, no build")
        self.deployments.transition(dep.id, Status.RELEASING, image=target.image_id)
        return target.image_id, target.image_tag

    def _release(self, dep: Deployment, app: App, tenant: str, image: str, tag: str, out: BuildLog, ctx: JobContext) -> None:
        target = self.releases.get(dep.source["release_id"]) if dep.source_kind == "rollback" else None
        port = target.port if target else app.port
        health_path = target.health_check_path if target else app.health_check_path
        try:
            env = self.env_vars.list(dep.tenant_id, app.id, reveal=True)
            linked = self.links.resolve(dep.tenant_id, app.id) if self.links else {}  # a link wins over a same-named var
        except (SecretUnreadable, CredentialsUnreadable) as exc:
            raise Failed(exc.detail) from None
        values = {v.name: v.value for v in env.vars if v.value is not None} | linked | {"PORT": str(port)}
        release = self.releases.create(
            tenant_id=dep.tenant_id, app_id=app.id, deployment_id=dep.id, image_id=image, image_tag=tag,
            env_version=env.env_version, port=port, health_check_path=health_path,
            rollback_of=target.id if target else None,
        )
        out.step(f"release {release.name}: env version {env.env_version} ({len(env.vars)} vars, {len(linked)} database links), port {port}")
        self.deployments.update(dep.id, release_id=release.id)
        self._check(dep.id, ctx)
        plan = SwapPlan(tenant=tenant, app=app.name, app_id=app.id, deployment_id=dep.id, release=release, env=values)
        with self.locks.hold(app.id):
            try:
                timings = swap(
                    self.runtime, plan, out, health_timeout=float(self.settings.health_timeout_s),
                    verify_timeout=float(self.settings.route_verify_timeout_s), drain_s=self.settings.swap_drain_ms / 1000,
                    make_current=lambda cid, name: self.releases.make_current(release, cid, name),
                    cancelled=lambda: self.deployments.cancel_requested(dep.id),
                )
            except SwapFailed as exc:
                raise Failed(str(exc)) from None
            except SwapCancelled:
                raise Cancelled() from None
        self.deployments.record_timing(dep.id, start_s=timings.start_s, health_s=timings.health_s, route_s=timings.route_s)
        self.deployments.transition(dep.id, Status.RUNNING)
        out.step(f"running {release.name}")
