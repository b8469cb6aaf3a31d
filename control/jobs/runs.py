"""The ``run`` job: a run's command in a new container from the release it names, with the
app's env vars and database links resolved as a deploy resolves them, its output into the
run's bounded log file.

Before the command starts, a dependency outage (Docker restarting) puts the job back in the
queue (``RetryLater``), as for a deploy. Once it has started, the command never runs twice:
a job that finds its run already ``running`` (its worker died, or the control plane
restarted) removes the container that attempt left and ends the run ``failed``, saying so;
an outage mid-run ends it ``failed`` too. The caller starts a new run if it wants one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from control.domain.databases import CredentialsUnreadable
from control.domain.env import EnvService, SecretUnreadable
from control.domain.errors import NotFound
from control.domain.links import LinkService
from control.domain.records import Job, Run
from control.domain.releases import ReleaseService
from control.domain.runs import NO_VOLUMES, READ_WRITE, RunService, RunStatus
from control.domain.volumes import VolumeService
from control.jobs.runtime_port import AppRuntime, RunOutcome, RunRefused, VolumeMount
from control.jobs.volumes import mounts_of
from control.jobs.workers import JobContext, as_outage

log = structlog.get_logger("moorage.runs")
CANCEL_CHECK_S = 0.5
RESTARTED = (
    "the control plane stopped while the command ran; a command is never run twice on its own: start a new run to run it again"
)


def run_container_name(run_id: str) -> str:
    return f"moorage-run-{run_id}"


class RunOutput:
    """A run's log file: its output as it comes, up to ``max_bytes``; then one line saying
    where it was cut, and nothing more."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.written = 0
        self.truncated = False
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")

    def line(self, text: str) -> None:
        data = text.encode("utf-8", "replace") + b"\n"
        with self._lock:
            if self.truncated or self._file.closed:
                return
            room = self.max_bytes - self.written
            if len(data) <= room:
                self._file.write(data)
                self.written += len(data)
            else:
                kept = data[:room]
                self._file.write(kept + (b"" if kept.endswith(b"\n") or not kept else b"\n"))
                self._file.write(f"[output cut at {self.max_bytes} bytes]\n".encode())
                self.written, self.truncated = self.max_bytes, True
            self._file.flush()  # so logs?follow=true sees each line as it comes

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Failed(Exception):
    """Ends the run ``failed`` before its command started; ``reason`` is for the tenant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Plan:
    tenant: str
    app: str
    release: str
    env: dict[str, str]  # plaintext, in memory only: passed at create, never logged
    mounts: tuple[VolumeMount, ...] = ()


@dataclass
class RunJob:
    runs: RunService
    releases: ReleaseService
    env_vars: EnvService
    runtime: AppRuntime
    tenant_name: Callable[[str], str]
    output_max_bytes: int
    links: LinkService | None = None
    volumes: VolumeService | None = None

    def __call__(self, job: Job, ctx: JobContext) -> None:
        run = self.runs.load(job.subject_id)
        if run is None or run.is_terminal:
            return
        if run.status == RunStatus.RUNNING:  # an earlier attempt started it
            self._remove_container(run.id)
            self.runs.fail_if_active(run.id, RESTARTED)
            return
        if run.cancel_requested:
            self.runs.finish(run.id, RunStatus.CANCELLED, reason="cancelled before it started")
            return
        try:
            plan = self._plan(run)
        except NotFound:
            return  # its app was deleted meanwhile, and the run with it
        except Failed as exc:
            self.runs.finish(run.id, RunStatus.FAILED, reason=exc.reason)
            return
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise
            raise outage from None
        if self.runs.start(run.id) is None:
            return  # cancelled (or gone) meanwhile
        self._run(run, plan, ctx)

    def give_up(self, job: Job, reason: str) -> None:
        self.runs.fail_if_active(job.subject_id, f"gave up after {job.attempts} attempt(s): {reason}")
        self._remove_container(job.subject_id)

    def remove_orphan_containers(self) -> list[str]:
        """A reconciler sweep: run containers whose run has ended or is gone (a worker that
        died mid-run, an app deleted meanwhile). Containers first, then the runs: a container
        listed here was created before these reads, so its run is active or already ended."""
        containers = self.runtime.owned_runs()
        if not containers:
            return []
        active = {run_container_name(run_id) for run_id in self.runs.active_ids()}
        return [c.name for c in containers if c.name not in active and self.runtime.remove(c.id)]

    # -- steps --------------------------------------------------------------------------
    def _plan(self, run: Run) -> _Plan:
        app = self.runs.app(run.tenant_id, run.app_id)
        release = self.releases.get(run.release_id)
        if release is None:
            raise Failed("the release it was to run no longer exists")
        if not self.runtime.image_exists(run.image):
            raise Failed(
                f"the image of {release.name} is no longer on this host (only the newest releases keep theirs); "
                "deploy again, then start a new run"
            )
        try:
            env = self.env_vars.list(run.tenant_id, app.id, reveal=True)
            linked = self.links.resolve(run.tenant_id, app.id) if self.links else {}  # a link wins over a same-named var
        except (SecretUnreadable, CredentialsUnreadable) as exc:
            raise Failed(exc.detail) from None
        values = {v.name: v.value for v in env.vars if v.value is not None} | linked | {"PORT": str(release.port)}
        mounts = mounts_of(self.volumes.for_app(app.id)) if self.volumes and run.volumes != NO_VOLUMES else ()
        return _Plan(tenant=self.tenant_name(run.tenant_id), app=app.name, release=release.name, env=values, mounts=mounts)

    def _run(self, run: Run, plan: _Plan, ctx: JobContext) -> None:
        out = RunOutput(Path(run.log_path), self.output_max_bytes)
        try:
            outcome = self.runtime.run_command(
                tenant=plan.tenant,
                app=plan.app,
                release=plan.release,
                image=run.image,
                env=plan.env,
                command=run.command,
                name=run_container_name(run.id),
                timeout=float(run.timeout_s),
                on_output=out.line,
                cancelled=self._cancel_check(run.id, ctx),
                volumes=plan.mounts,
                volumes_read_only=run.volumes != READ_WRITE,
            )
        except RunRefused as exc:
            self._end(run.id, RunStatus.FAILED, out, reason=str(exc))
            return
        except Exception as exc:
            outage = as_outage(exc)
            why = outage.reason if outage else f"internal error ({type(exc).__name__})"
            self._end(run.id, RunStatus.FAILED, out, reason=f"the command could not be followed to its end: {why}")
            self._remove_container(run.id)
            if outage is None:
                raise
            return
        finally:
            out.close()
        status, fields = verdict(outcome, run.timeout_s)
        self._end(run.id, status, out, **fields)
        log.info("run_finished", run_id=run.id, status=str(status), exit_code=outcome.exit_code)

    def _end(self, run_id: str, status: RunStatus, out: RunOutput, **fields: object) -> None:
        self.runs.finish(run_id, status, output_truncated=out.truncated, output_bytes=out.written, **fields)

    def _cancel_check(self, run_id: str, ctx: JobContext) -> Callable[[], bool]:
        """Cancelled, gone (its app was deleted) or no longer this worker's; the database is
        asked at most twice a second however often the runtime asks."""
        last_check = [0.0]

        def cancelled() -> bool:
            if ctx.lease_lost.is_set():
                return True
            if time.monotonic() - last_check[0] < CANCEL_CHECK_S:
                return False
            last_check[0] = time.monotonic()
            return self.runs.cancel_requested(run_id)

        return cancelled

    def _remove_container(self, run_id: str) -> None:
        name = run_container_name(run_id)
        try:
            for container in self.runtime.owned_runs():
                if container.name == name:
                    self.runtime.remove(container.id)
        except Exception as exc:  # noqa: BLE001 (Docker down: the reconciler's sweep removes it later)
            log.warning("run_container_not_removed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")


def verdict(outcome: RunOutcome, timeout_s: int) -> tuple[RunStatus, dict[str, object]]:
    if outcome.cancelled:
        return RunStatus.CANCELLED, {"reason": "cancelled by request; the container was killed"}
    if outcome.timed_out:
        return RunStatus.TIMED_OUT, {"reason": f"killed after its timeout of {timeout_s}s"}
    if outcome.exit_code == 0:
        return RunStatus.SUCCEEDED, {"exit_code": 0}
    return RunStatus.FAILED, {"exit_code": outcome.exit_code, "reason": f"the command exited with code {outcome.exit_code}"}
