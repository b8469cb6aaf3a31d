"""The deploy job's first step: the deployment's source tree, built into an image; and the
deployment's log, which every step writes to.

The log is one append-only file per deployment under the data dir (the DB row holds its
path). Lines are flushed as they come, so ``logs?follow=true`` sees them live. Only build
output and pipeline messages go there: env values never do.

An uploaded archive was extracted at upload time; a git source is cloned here with the git
CLI (depth 1, time limit, no hooks, no prompts, https only (http where allowed), no
redirects, the host pinned to the addresses the policy checked: ``control.domain.git_sources``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from control.domain.build_policy import BuildPolicy, DockerfileRefused
from control.domain.deployments import DeploymentService, Status
from control.domain.errors import Invalid
from control.domain.git_sources import (
    GitHostRefused,
    check_git_source,
    curl_resolve_entries,
    resolve_git_host,
)
from control.domain.records import App, Deployment, Job
from control.jobs.runtime_port import AppRuntime
from control.jobs.workers import JobContext
from control.settings import Settings
from runtime.builders import (
    BuildCancelled,
    BuildError,
    BuilderUnavailable,
    BuildRequest,
    BuildTimeout,
    BuiltImage,
    select_builder,
)


class Failed(Exception):
    """Ends the deployment ``failed``; ``reason`` is a sentence for the tenant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cancelled(Exception):
    """Ends the deployment ``cancelled``: its cancel was asked for."""


def check_step(deployments: DeploymentService, deployment_id: str, ctx: JobContext) -> None:
    """Between steps: stop if another worker owns the job now, or a cancel was asked for."""
    if ctx.lease_lost.is_set():
        raise RuntimeError("lease lost: another worker owns this job now")
    if deployments.cancel_requested(deployment_id):
        raise Cancelled()


TENANT_IMAGES = "moorage-apps/"  # every tenant's images are tagged under here


def tenant_repository(tenant_id: str) -> str:
    """Where a tenant's images are tagged; the build policy lets it build FROM these only. By
    id, not name: a tenant made later under a deleted one's name must not reach its images."""
    return f"{TENANT_IMAGES}{tenant_id}/"


# -- the log --------------------------------------------------------------------------------
class BuildLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(text.rstrip("\n") + "\n")

    def step(self, text: str) -> None:
        """A pipeline message (as opposed to builder output), timestamped."""
        self.line(f"[moorage {datetime.now(UTC).strftime('%H:%M:%S')}] {text}")


def read_from(path: Path, offset: int) -> tuple[str, int]:
    """Complete lines from ``offset`` on, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return "", offset
    end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
    return data[:end].decode("utf-8", "replace"), offset + end


# -- the source -----------------------------------------------------------------------------
class SourceError(RuntimeError):
    """The source could not be fetched; the message is safe to show the tenant."""


def _tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*"))


def clone(
    url: str,
    ref: str,
    dest: Path,
    *,
    timeout: float,
    max_bytes: int,
    pins: Sequence[str] = (),
    allow_http: bool = False,
    allow_file: bool = False,
) -> None:
    """``pins``: ``host:port:address[,address]`` entries for curl, so git connects only to
    the addresses that were checked, whatever DNS answers by then. ``allow_file``: the URL
    is a file:// path the policy checked (every other protocol stays refused)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }  # no url.insteadOf or credential helpers from the host
    # init + fetch of one ref at depth 1 works for branches, tags and commit ids alike.
    safe = [
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        f"protocol.http.allow={'always' if allow_http else 'never'}",
        "-c",
        f"protocol.file.allow={'always' if allow_file else 'never'}",
        "-c",
        "http.followRedirects=false",
    ]
    for pin in pins:
        safe += ["-c", f"http.curloptResolve={pin}"]
    steps = [
        ["git", "init", "--quiet", str(dest)],
        ["git", *safe, "-C", str(dest), "fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, ref],
        ["git", *safe, "-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "--quiet", "FETCH_HEAD"],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"git {cmd[cmd.index('-C') + 2] if '-C' in cmd else 'init'} took longer than {timeout:.0f}s"
            ) from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise SourceError(f"git could not fetch ref {ref!r} from the repository: {detail[0][:300]}")
    shutil.rmtree(dest / ".git", ignore_errors=True)  # history is not part of the build context
    if _tree_size(dest) > max_bytes:
        raise SourceError(f"the repository checkout is larger than {max_bytes} bytes")


# -- the build ------------------------------------------------------------------------------
@dataclass
class SourceBuild:
    settings: Settings
    deployments: DeploymentService
    runtime: AppRuntime
    # Told of every build that ran (tenant id, start and end in epoch seconds): metering.
    built: Callable[[str, float, float], None] = lambda tenant_id, started, ended: None

    def run(self, dep: Deployment, job: Job, app: App, tenant: str, out: BuildLog, ctx: JobContext) -> tuple[str, str]:
        """The image id and tag; the deployment is ``releasing`` then."""
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
        policy = BuildPolicy(
            allowed_images=self.settings.allowed_images, own_repository=tenant_repository(dep.tenant_id), lineage=dep.tenant_id
        )

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

        started, began = time.monotonic(), time.time()
        request = BuildRequest(
            source=src,
            tag=tag,
            tenant=tenant,
            app=app.name,
            timeout=float(self.settings.build_timeout_s),
            on_line=out.line,
            cancelled=cancelled,
            work_dir=workdir,
            prepare_dockerfile=checked,
        )
        try:
            built = self._build(choice, request, dep, ctx)
        finally:  # a failed or cut-off build took its time too
            seconds = time.monotonic() - started
            self.deployments.record_timing(dep.id, build_s=seconds)
            self.built(dep.tenant_id, began, began + seconds)
        out.step(f"built {built.image_id[:19]} in {seconds:.2f}s")
        check_step(self.deployments, dep.id, ctx)
        self.deployments.transition(dep.id, Status.RELEASING, builder=choice, image=built.image_id)
        return built.image_id, tag

    def _build(self, builder: str, request: BuildRequest, dep: Deployment, ctx: JobContext) -> BuiltImage:
        try:
            return self.runtime.build_image(builder, request)
        except BuilderUnavailable as exc:
            raise Failed(str(exc)) from None
        except DockerfileRefused as exc:
            raise Failed(exc.reason) from None
        except BuildTimeout:
            raise Failed(f"the build exceeded its time limit of {self.settings.build_timeout_s}s") from None
        except BuildError as exc:
            raise Failed(f"the build failed: {exc}") from None
        except BuildCancelled:
            check_step(self.deployments, dep.id, ctx)
            raise Cancelled() from None

    def _clone(self, dep: Deployment, src: Path, out: BuildLog) -> None:
        """The policy again, just before cloning (the source may predate it, and DNS may
        answer differently now than when the API checked): git is pinned to what passed."""
        url, ref = dep.source["url"], dep.source["ref"]
        try:
            target = check_git_source(
                url, ref, allow_http=self.settings.git_allow_http, file_prefixes=self.settings.git_file_roots
            )
            addresses = [] if target.is_file else resolve_git_host(target, self.settings.git_networks)
        except Invalid as exc:
            raise Failed(exc.detail) from None
        except GitHostRefused as exc:
            raise Failed(str(exc)) from None
        if target.path is not None:
            url = f"file://{target.path}"  # the resolved path: git opens what was checked
            out.step("the file:// repository lies under a directory the operator allows; fetching from it")
        else:
            out.step(f"git host {target.host} resolves to {', '.join(addresses)}: allowed; fetching from exactly that")
        try:
            clone(
                url,
                ref,
                src,
                timeout=self.settings.git_timeout_s,
                max_bytes=self.settings.max_source_bytes,
                pins=curl_resolve_entries(target, addresses),
                allow_http=self.settings.git_allow_http,
                allow_file=target.is_file,
            )
        except SourceError as exc:
            raise Failed(str(exc)) from None
