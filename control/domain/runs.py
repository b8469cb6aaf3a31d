"""One-off runs: a command in a new container from an app's current release, with the app's
env vars and database links, on the tenant's network, in the usual sandbox, never routed.

A run is a job (``RUN_JOB``, run by ``control.jobs.runs``), so queued runs survive restarts
and share the queue's per-tenant limit with deployments and database jobs. Its states:
``queued → running → succeeded | failed | timed_out | cancelled``; ``exit_code`` is the
command's own status (null when it was killed or never started). Its output goes to a log
file under the data dir, bounded (``run_output_max_bytes``), and streams like a build log.

A command runs at most once: a run that was ``running`` when its worker died (or the control
plane restarted) is not started again; its container is removed and it ends ``failed``,
saying so. A queued run that no worker had started yet runs as usual.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.jobs import JobEnqueuer
from control.domain.records import App, Page, Release, Run
from control.ids import new_id
from control.store.database import Store
from control.store.models import RunRow
from control.store.repositories.apps import AppRepository
from control.store.repositories.releases import AppRuntimeRepository, ReleaseRepository
from control.store.repositories.runs import RunRepository, to_run

RUN_JOB = "run"
API_TRIGGER = "api"
# How a run mounts its app's volumes. Read-only by default: the app's container is a writer
# already, and file locks do not cross gVisor sandboxes (two SQLite writers in two sandboxes
# can corrupt the file), so a second writer is something to ask for.
NO_VOLUMES, READ_ONLY, READ_WRITE = "none", "read-only", "read-write"
VOLUME_MODES = (NO_VOLUMES, READ_ONLY, READ_WRITE)
CRON_TRIGGER = "cron:"  # + the schedule's name
COMMAND_MAX_ITEMS = 128
ARG_MAX_CHARS = 4096
ORPHAN_LOG_AGE_S = 3600.0


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


_ENDS = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED})
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: _ENDS,
    **{end: frozenset() for end in _ENDS},
}


@dataclass(frozen=True)
class RunLimits:
    timeout_default_s: int = 600
    timeout_max_s: int = 3600


def check_command(command: Sequence[str], field: str = "command") -> tuple[str, ...]:
    """The argv to run as it is (no shell): a program and its arguments."""
    problem = None
    if not command:
        problem = 'must name a program to run, e.g. ["python", "manage.py", "migrate"]'
    elif len(command) > COMMAND_MAX_ITEMS:
        problem = f"at most {COMMAND_MAX_ITEMS} items"
    elif not command[0]:
        problem = "its first item (the program) must not be empty"
    elif any(len(arg) > ARG_MAX_CHARS for arg in command):
        problem = f"each item at most {ARG_MAX_CHARS} characters"
    elif any("\x00" in arg for arg in command):
        problem = "no item may contain a NUL character"
    if problem is not None:
        raise Invalid(f"'{field}' {problem}. Fix it and retry.", errors=[{"field": field, "message": problem}])
    return tuple(command)


def cron_trigger(schedule_name: str) -> str:
    return f"{CRON_TRIGGER}{schedule_name}"


class RunService:
    def __init__(self, db: Store, queue: JobEnqueuer, data_dir: Path, limits: RunLimits = RunLimits(), *, max_attempts: int = 2):
        self.db = db
        self.queue = queue
        self.root = data_dir / "runs"
        self.limits = limits
        self.max_attempts = max_attempts

    # -- files --------------------------------------------------------------------------
    def log_path(self, run_id: str) -> Path:
        return self.root / run_id / "output.log"

    # -- rules --------------------------------------------------------------------------
    def timeout(self, value: int | None, field: str = "timeout_s") -> int:
        if value is None:
            return min(self.limits.timeout_default_s, self.limits.timeout_max_s)
        if not 1 <= value <= self.limits.timeout_max_s:
            message = f"between 1 and {self.limits.timeout_max_s} seconds (this server's MOORAGE_RUN_TIMEOUT_MAX_S)"
            raise Invalid(f"'{field}' must be {message}; got {value}.", errors=[{"field": field, "message": message}])
        return value

    def app(self, tenant_id: str, app_ref: str) -> App:
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
        if app is None:
            raise NotFound.of("app", app_ref)
        return app

    # -- creation -----------------------------------------------------------------------
    def create(
        self, tenant_id: str, app_ref: str, command: Sequence[str], timeout_s: int | None, *, volumes: str = READ_ONLY
    ) -> Run:
        app = self.app(tenant_id, app_ref)
        if volumes not in VOLUME_MODES:
            raise Invalid(
                f"'volume_access' must be one of {list(VOLUME_MODES)}; got {volumes!r}.",
                errors=[{"field": "volume_access", "message": f"one of {list(VOLUME_MODES)}"}],
            )
        argv, timeout = check_command(command), self.timeout(timeout_s)
        with self.db.write() as session:
            release = current_release(session, app)
            if release is None:
                raise Conflict(
                    f"App '{app.name}' has no release yet, so there is no image to run the command in: "
                    f"deploy it first (POST /v1/apps/{app.name}/deployments), then retry.",
                    code="no-release",
                )
            return self.add(session, app, release, argv, timeout, API_TRIGGER, volumes=volumes)

    def add(
        self,
        session: Session,
        app: App,
        release: Release,
        command: tuple[str, ...],
        timeout_s: int,
        trigger: str,
        *,
        volumes: str = READ_ONLY,
    ) -> Run:
        """A queued run and its job, in the caller's write (the job exists iff the run does)."""
        run_id = new_id("run")
        log = self.log_path(run_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        run = RunRepository(session, app.tenant_id).add(
            RunRow(
                id=run_id,
                tenant_id=app.tenant_id,
                app_id=app.id,
                status=RunStatus.QUEUED,
                command=json.dumps(list(command)),
                timeout_s=timeout_s,
                trigger=trigger,
                volumes=volumes,
                release_id=release.id,
                image=release.image_id,
                output_truncated=False,
                output_bytes=0,
                cancel_requested=False,
                log_path=str(log),
            )
        )
        self.queue.enqueue(RUN_JOB, run_id, tenant_id=app.tenant_id, max_attempts=self.max_attempts)
        return run

    # -- reading ------------------------------------------------------------------------
    def get(self, tenant_id: str, app_ref: str, run_id: str) -> Run:
        app = self.app(tenant_id, app_ref)
        with self.db.read() as session:
            run = RunRepository(session, tenant_id).get(run_id, app.id)
        if run is None:
            raise NotFound.of("run", run_id)
        return run

    def list(self, tenant_id: str, app_ref: str, *, cron: str | None, limit: int, cursor: str | None) -> Page[Run]:
        app = self.app(tenant_id, app_ref)
        trigger = None if cron is None else cron_trigger(cron)
        with self.db.read() as session:
            return RunRepository(session, tenant_id).list(app.id, trigger=trigger, limit=limit, cursor=cursor)

    def load(self, run_id: str) -> Run | None:
        """Platform-internal (workers, the scheduler): no tenant scope."""
        with self.db.read() as session:
            return RunRepository(session, None).get(run_id)

    def cancel_requested(self, run_id: str) -> bool:
        """True too when the run is gone (its app was deleted): nothing should go on running for it."""
        run = self.load(run_id)
        return run is None or run.cancel_requested

    def active_ids(self) -> set[str]:
        with self.db.read() as session:
            return RunRepository(session, None).active_ids()

    # -- changes ------------------------------------------------------------------------
    def cancel(self, tenant_id: str, app_ref: str, run_id: str) -> Run:
        app = self.app(tenant_id, app_ref)
        with self.db.write() as session:
            row = RunRepository(session, tenant_id).row(run_id, app.id)
            if row is None:
                raise NotFound.of("run", run_id)
            if RunStatus(row.status) in _ENDS:
                raise Conflict(f"Run {run_id} already ended ('{row.status}'); nothing to cancel.", code="run-finished")
            row.cancel_requested = True
            # At once only while no worker holds its job; a worker that has it kills the
            # container within a second of seeing the flag.
            if row.status == RunStatus.QUEUED and self.queue.cancel_queued(run_id):
                _apply(row, RunStatus.CANCELLED, {"reason": "cancelled before it started"})
            session.flush()
            return to_run(row)

    def start(self, run_id: str) -> Run | None:
        """``queued → running``; None when the run is gone or no longer queued."""
        return self._move(run_id, RunStatus.RUNNING, {"started_at": utcnow()}, expect=(RunStatus.QUEUED,))

    def finish(self, run_id: str, status: RunStatus, **fields: Any) -> Run | None:
        """Into an end state (``exit_code``, ``reason``, ``output_truncated``, ``output_bytes``);
        None when the run is gone or had ended already."""
        return self._move(run_id, status, fields, expect=(RunStatus.QUEUED, RunStatus.RUNNING))

    def fail_if_active(self, run_id: str, reason: str) -> Run | None:
        return self.finish(run_id, RunStatus.FAILED, reason=reason)

    def _move(self, run_id: str, to: RunStatus, fields: dict[str, Any], *, expect: tuple[RunStatus, ...]) -> Run | None:
        with self.db.write() as session:
            row = RunRepository(session, None).row(run_id)
            if row is None or RunStatus(row.status) not in expect:
                return None
            _apply(row, to, fields)
            session.flush()
            return to_run(row)

    # -- retention ----------------------------------------------------------------------
    def prune(self, keep_per_app: int) -> int:
        """Finished runs beyond each app's ``keep_per_app`` newest, with their logs; and the
        log folders of runs that are gone (their app was deleted)."""
        with self.db.write() as session:
            repo = RunRepository(session, None)
            doomed = [row.id for row in repo.beyond_newest(keep_per_app)]
            removed = repo.remove(doomed) if doomed else 0
        for run_id in doomed:  # after the commit: a discarded delete keeps its logs
            shutil.rmtree(self.root / run_id, ignore_errors=True)
        # A folder is made just before its run's row commits: only old ones can be strays.
        settled = time.time() - ORPHAN_LOG_AGE_S
        folders = [p.name for p in self.root.iterdir() if p.stat().st_mtime < settled] if self.root.is_dir() else []
        with self.db.read() as session:
            known = RunRepository(session, None).ids(folders) if folders else set()
        for name in set(folders) - known:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return removed


def current_release(session: Session, app: App) -> Release | None:
    release_id = AppRuntimeRepository(session).current_release_id(app.id)
    return None if release_id is None else ReleaseRepository(session, app.tenant_id).get(release_id)


def _apply(row: RunRow, to: RunStatus, fields: dict[str, Any]) -> None:
    if to not in TRANSITIONS[RunStatus(row.status)]:
        raise Conflict(f"A run cannot go from '{row.status}' to '{to}'.", code="invalid-transition")
    row.status = str(to)
    if to in _ENDS:
        row.finished_at = utcnow()
    for name, value in fields.items():
        setattr(row, name, value)
