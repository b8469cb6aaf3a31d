"""Deployments: accept source (archive or git), queue the job, record every state change.

The job itself (build, release, swap) runs in ``control.jobs.deploy``; this service owns
the rules: which source is acceptable, the state machine, cancellation.

The state machine: ``queued → building → releasing → running | failed | cancelled``. A
rollback skips ``building``. ``building`` and ``releasing`` may be entered again when a job
is retried after its worker died (the history keeps every entry).
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.compute import ComputeQuota
from control.domain.errors import Conflict, NotFound
from control.domain.jobs import JobEnqueuer
from control.domain.records import App, Deployment, Page
from control.domain.volumes import FULL, full_reason
from control.ids import new_id
from control.store.database import Store
from control.store.models import DeploymentRow
from control.store.repositories.apps import AppRepository
from control.store.repositories.deployments import DeploymentRepository, to_deployment
from control.store.repositories.volumes import VolumeRepository

DEPLOY_JOB = "deploy"
ROLLBACK = "rollback"  # the source kind of a deployment that reuses a release's image: no build
IMAGE = "image"  # the source kind of a deployment of an image this tenant already has (a fork's snapshot): no build


class Status(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    RELEASING = "releasing"
    RUNNING = "running"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED})
_END = {Status.FAILED, Status.CANCELLED}
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.BUILDING, Status.RELEASING, *_END}),
    Status.BUILDING: frozenset({Status.BUILDING, Status.RELEASING, *_END}),
    Status.RELEASING: frozenset({Status.BUILDING, Status.RELEASING, Status.RUNNING, *_END}),
    Status.RUNNING: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class InvalidTransition(Conflict):
    code = "invalid-transition"


def check_transition(current: str, target: str) -> Status:
    to = Status(target)
    if to not in TRANSITIONS[Status(current)]:
        raise InvalidTransition(f"A deployment cannot go from '{current}' to '{target}'.")
    return to


class DeploymentService:
    def __init__(
        self, db: Store, queue: JobEnqueuer, data_dir: Path, *, max_attempts: int = 2, quota: ComputeQuota | None = None
    ) -> None:
        self.db = db
        self.quota = quota  # an app's first deploy must fit the tenant's compute; builds its build minutes
        self.queue = queue
        self.root = data_dir / "deployments"
        self.max_attempts = max_attempts

    # -- files ------------------------------------------------------------------------
    def workdir(self, deployment_id: str) -> Path:
        return self.root / deployment_id

    def log_path(self, deployment_id: str) -> Path:
        return self.workdir(deployment_id) / "build.log"

    def discard_source(self, deployment_id: str) -> None:
        """After a terminal state: the source and build scratch go, the log stays."""
        for name in ("src", "nixpacks-out", "upload.tar.gz"):
            path = self.workdir(deployment_id) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # -- creation ---------------------------------------------------------------------
    def app(self, tenant_id: str, app_ref: str, *, previews: bool = False) -> App:
        """``previews``: a preview is found too (the deploy job; read-only views of its
        deployments and logs); what changes an app never acts on one."""
        with self.db.read() as session:
            app = AppRepository(session, tenant_id, previews=previews).get(app_ref)
        if app is None:
            raise NotFound.of("app", app_ref)
        return app

    def new_id(self) -> str:
        return new_id("dep")

    def refuse_if_volume_full(self, tenant_id: str, app: App) -> None:
        """409 ``volume-full`` while a measured volume of the app holds more than its size."""
        with self.db.read() as session:
            full = [v for v in VolumeRepository(session, tenant_id).for_app(app.id) if v.status == FULL]
        if full:
            raise Conflict(f"Not deployed: {full_reason(app.name, full[0])}.", code="volume-full")

    def refuse_if_over_quota(self, tenant_id: str, app: App, source_kind: str) -> None:
        """422 ``quota-exceeded`` before an upload is read; ``create`` checks again as it writes."""
        with self.db.read() as session:
            self._check_quota(session, tenant_id, app, source_kind)

    def _check_quota(self, session: Session, tenant_id: str, app: App, source_kind: str) -> None:
        if self.quota is None:
            return
        current = AppRepository(session, tenant_id, previews=True).get(app.id) or app  # its replicas as of this transaction
        self.quota.check_first_deploy(session, tenant_id, current.id, current.name, current.replicas)
        if source_kind not in (ROLLBACK, IMAGE):
            self.quota.check_build_minutes(session, tenant_id)

    def create(self, tenant_id: str, app: App, deployment_id: str, source_kind: str, source: dict[str, Any]) -> Deployment:
        self.refuse_if_volume_full(tenant_id, app)
        log = self.log_path(deployment_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        with self.db.write() as session:
            self._check_quota(session, tenant_id, app, source_kind)
            deployment = DeploymentRepository(session, tenant_id).add(
                id=deployment_id, app_id=app.id, source_kind=source_kind, source=source, log_path=str(log)
            )
            self.queue.enqueue(DEPLOY_JOB, deployment_id, tenant_id=tenant_id, max_attempts=self.max_attempts)
        return deployment

    # -- reading ----------------------------------------------------------------------
    def get(self, tenant_id: str, app_ref: str, deployment_id: str) -> Deployment:
        app = self.app(tenant_id, app_ref, previews=True)  # read-only: a preview's too
        with self.db.read() as session:
            deployment = DeploymentRepository(session, tenant_id).get(deployment_id, app.id)
        if deployment is None:
            raise NotFound.of("deployment", deployment_id)
        return deployment

    def list(self, tenant_id: str, app_ref: str, *, limit: int, cursor: str | None) -> Page[Deployment]:
        app = self.app(tenant_id, app_ref, previews=True)  # read-only: a preview's too
        with self.db.read() as session:
            return DeploymentRepository(session, tenant_id).list(app.id, limit=limit, cursor=cursor)

    def load(self, deployment_id: str) -> Deployment | None:
        """Platform-internal (workers): no tenant scope."""
        with self.db.read() as session:
            return DeploymentRepository(session, None).get(deployment_id)

    def active(self, app_id: str | None = None) -> builtins.list[Deployment]:
        with self.db.read() as session:
            return DeploymentRepository(session, None).active(app_id)

    # -- changes ----------------------------------------------------------------------
    def transition(self, deployment_id: str, to: Status, *, reason: str | None = None, **fields: Any) -> Deployment:
        with self.db.write() as session:
            row = DeploymentRepository(session, None).row(deployment_id)
            if row is None:
                raise NotFound.of("deployment", deployment_id)
            _apply(row, to, reason, fields)
            session.flush()
            return to_deployment(row)

    def fail_if_active(self, deployment_id: str, reason: str) -> None:
        """For a job given up on (its worker died too often): never leave it 'building'."""
        with self.db.write() as session:
            row = DeploymentRepository(session, None).row(deployment_id)
            if row is not None and Status(row.status) not in (Status.RUNNING, Status.FAILED, Status.CANCELLED):
                _apply(row, Status.FAILED, reason, {})

    def cancel(self, tenant_id: str, app_ref: str, deployment_id: str) -> Deployment:
        app = self.app(tenant_id, app_ref)
        with self.db.write() as session:
            repo = DeploymentRepository(session, tenant_id)
            row = repo.row(deployment_id, app.id)
            if row is None:
                raise NotFound.of("deployment", deployment_id)
            if Status(row.status) in (Status.RUNNING, Status.FAILED, Status.CANCELLED):
                raise Conflict(
                    f"Deployment {deployment_id} already ended ('{row.status}'); nothing to cancel.", code="deployment-finished"
                )
            row.cancel_requested = True
            # On the spot only while no worker holds its job. A worker that claimed it is
            # still 'queued' until its first step, and honours the flag at its next check:
            # cancelled under it, its own next transition would be refused.
            if row.status == Status.QUEUED and self.queue.cancel_queued(deployment_id):
                _apply(row, Status.CANCELLED, "cancelled before it started", {})
            session.flush()
            return to_deployment(row)

    def cancel_requested(self, deployment_id: str) -> bool:
        deployment = self.load(deployment_id)
        return deployment is None or deployment.cancel_requested

    def update(self, deployment_id: str, **fields: Any) -> None:
        """Fields that are not a state change (the release made by this deployment)."""
        with self.db.write() as session:
            row = DeploymentRepository(session, None).row(deployment_id)
            if row is not None:
                for name, value in fields.items():
                    setattr(row, name, value)

    def record_timing(self, deployment_id: str, **seconds: float) -> None:
        with self.db.write() as session:
            row = DeploymentRepository(session, None).row(deployment_id)
            if row is not None:
                row.timings = json.dumps({**json.loads(row.timings or "{}"), **{k: round(v, 3) for k, v in seconds.items()}})


def _apply(row: DeploymentRow, to: Status, reason: str | None, fields: dict[str, Any]) -> None:
    check_transition(row.status, to)
    entry: dict[str, Any] = {"status": str(to), "at": utcnow().isoformat()}
    if reason:
        entry["reason"] = reason
    row.transitions = json.dumps([*json.loads(row.transitions or "[]"), entry])
    row.status = str(to)
    if to in (Status.FAILED, Status.CANCELLED) and reason:
        row.reason = reason
    for name, value in fields.items():
        setattr(row, name, value)
