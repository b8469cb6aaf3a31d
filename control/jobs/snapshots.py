"""The snapshot jobs on the one worker pool: ``snapshot.capture`` reads an app's data into a
snapshot's files; ``snapshot.fork`` fills a fork's new volumes and databases from them and
deploys the snapshot's image for the new app.

Consistency of a volume's tar: the app's containers that mount the volume are **stopped**
(kept) while it is read, holding the app's lock (no swap, no reconciler pass meanwhile), and
started again right after, their route pointing at them again; ``paused_ms`` records how long.
Stopped, not frozen: a stop lets the app flush and close its files (SQLite's journal, say),
and gVisor keeps writes in its sandbox until they reach the volume, so a frozen container's
last writes may not be in the volume yet. One-off runs given read-write volumes are not
stopped: take snapshots when none runs. Databases are dumped through the backup path
(``pg_dump -Fc``: one consistent transaction; Redis: ``BGSAVE``) while they keep serving.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from control.domain.databases import CredentialsUnreadable
from control.domain.databases import Status as DatabaseStatus
from control.domain.deployments import IMAGE, DeploymentService
from control.domain.errors import DomainError
from control.domain.records import Job
from control.domain.releases import ReleaseService
from control.domain.snapshot_records import Fork, Snapshot, SnapshotFile
from control.domain.snapshots import (
    CAPTURE_JOB,
    DEPLOYING,
    FAILED,
    FORK_JOB,
    MANIFEST,
    PENDING,
    RESTORING,
    RUNNING,
    SUCCEEDED,
    SnapshotCorrupt,
    SnapshotService,
    manifest_body,
    sha256_file,
)
from control.domain.volumes import VolumeService
from control.jobs.databases import DatabaseJobs, JobFailed
from control.jobs.runtime_port import AppContainer, AppRuntime, Route, VolumeMount
from control.jobs.workers import AppLocks, JobContext, JobKind, RetryLater, as_outage
from runtime.databases import DatabaseError
from runtime.volumes import VolumeError

log = structlog.get_logger("moorage.jobs.snapshots")
FAILURES = (JobFailed, DatabaseError, CredentialsUnreadable, VolumeError, SnapshotCorrupt, OSError)


@dataclass
class SnapshotJobs:
    snapshots: SnapshotService
    volumes: VolumeService
    releases: ReleaseService
    deployments: DeploymentService
    databases: DatabaseJobs
    runtime: AppRuntime
    locks: AppLocks
    tenant_name: Callable[[str], str]
    database_wait_s: float = 2.0  # a fork's databases still provisioning: looked at again after this

    def kinds(self) -> dict[str, JobKind]:
        def capture_gave_up(job: Job, reason: str) -> None:
            self.snapshots.mark(job.subject_id, FAILED, reason=f"gave up: {reason}")
            snapshot = self.snapshots.load(job.subject_id)
            if snapshot is not None:
                shutil.rmtree(self.snapshots.directory(snapshot.tenant_id, snapshot.id), ignore_errors=True)

        def fork_gave_up(job: Job, reason: str) -> None:
            self.snapshots.mark_fork(job.subject_id, FAILED, reason=f"gave up: {reason}")

        return {CAPTURE_JOB: JobKind(self.capture, capture_gave_up), FORK_JOB: JobKind(self.fork, fork_gave_up)}

    @contextlib.contextmanager
    def _transient(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise
            raise outage from None

    # -- capture ------------------------------------------------------------------------------
    def capture(self, job: Job, ctx: JobContext) -> None:
        snapshot = self.snapshots.load(job.subject_id)
        if snapshot is None or snapshot.is_finished:
            return
        folder = self.snapshots.directory(snapshot.tenant_id, snapshot.id)
        shutil.rmtree(folder, ignore_errors=True)  # a retried capture starts over
        folder.mkdir(mode=0o700, parents=True)
        self.snapshots.mark(snapshot.id, RUNNING)
        try:
            with self._transient():
                files, paused_ms = self._capture(snapshot, folder)
            manifest = manifest_body(snapshot.id, files)
            (folder / MANIFEST).write_bytes(manifest)
            size = sum(f.size for f in files) + len(manifest)
            self.snapshots.check_fits(snapshot.tenant_id, size)
        except (*FAILURES, DomainError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            reason = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            self.snapshots.mark(snapshot.id, FAILED, reason=reason)
            log.warning("snapshot_failed", snapshot_id=snapshot.id, reason=reason)
            return
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        digest = sha256_file(folder / MANIFEST)
        recorded = self.snapshots.mark(
            snapshot.id,
            SUCCEEDED,
            files=json.dumps([_file_doc(f) for f in files]),
            manifest_sha256=digest,
            size_bytes=size,
            paused_ms=paused_ms,
        )
        if not recorded:  # its app was deleted meanwhile (the row went with it)
            shutil.rmtree(folder, ignore_errors=True)
            return
        log.info("snapshot_taken", snapshot_id=snapshot.id, files=len(files), bytes=size, paused_ms=paused_ms)

    def _capture(self, snapshot: Snapshot, folder: Path) -> tuple[list[SnapshotFile], int | None]:
        tenant = self.tenant_name(snapshot.tenant_id)
        if not self.runtime.image_exists(snapshot.image_id):
            raise JobFailed(f"the image of {snapshot.release_name} is no longer on this host; deploy the app and snapshot again")
        current = {v.id: v for v in self.volumes.for_app(snapshot.app_id)}
        mounts = []
        for volume in snapshot.volumes:
            found = current.get(volume.volume_id)
            if found is None:
                raise JobFailed(f"volume '{volume.name}' was deleted before its data was read")
            mounts.append((volume.name, VolumeMount(found.id, found.mount_path, found.enforced)))
        files: list[SnapshotFile] = []
        paused_ms = None
        if mounts:
            ids = {m.volume_id for _, m in mounts}
            with self.locks.hold(snapshot.app_id):  # no swap and no reconciler pass starts a writer meanwhile
                writers = [
                    c for c in self.runtime.owned_apps(tenant=tenant, app=snapshot.app_name) if c.running and ids & set(c.volumes)
                ]
                paused = time.monotonic()
                for container in writers:
                    self.runtime.stop(container.id)
                try:
                    for name, mount in mounts:
                        path = folder / f"volume-{name}.tar"
                        self.runtime.export_volume(
                            volume=mount, tenant=tenant, app=snapshot.app_name, image=snapshot.image_id, dest=path
                        )
                        files.append(SnapshotFile(path.name, "volume", name, path.stat().st_size, sha256_file(path)))
                finally:
                    self._start_again(snapshot, tenant, writers)
                    paused_ms = round((time.monotonic() - paused) * 1000) if writers else 0
        for link in snapshot.links:
            dumped = self.databases.dump(link.database_id, folder, stem=f"db-{link.env_name}")
            dumped.checksum_path.unlink(missing_ok=True)  # the manifest is the reference
            files.append(SnapshotFile(dumped.path.name, "database", link.env_name, dumped.size, dumped.sha256))
        return files, paused_ms

    def _start_again(self, snapshot: Snapshot, tenant: str, stopped: list[AppContainer]) -> None:
        desired = next(iter(self.releases.desired(snapshot.app_id)), None)
        for container in stopped:
            try:
                again = self.runtime.restart(container.id)
                if desired is not None and desired.container_id == container.id:
                    release = desired.release
                    route = Route.to(
                        snapshot.app_id, tenant, snapshot.app_name, [again], release.port, release.name, release.health_check_path
                    )
                    self.runtime.write_route(route)
            except Exception as exc:  # noqa: BLE001 (the reconciler starts it again within its interval)
                log.warning("snapshot_writer_not_restarted", container=container.name, error=f"{type(exc).__name__}: {exc}")

    # -- fork ---------------------------------------------------------------------------------
    def fork(self, job: Job, ctx: JobContext) -> None:
        fork = self.snapshots.load_fork(job.subject_id)
        if fork is None or fork.status not in (PENDING, RESTORING):
            return
        snapshot = self.snapshots.load(fork.snapshot_id)
        if snapshot is None:
            self.snapshots.mark_fork(fork.id, FAILED, reason="the snapshot was deleted before the fork was filled")
            return
        for planned in fork.plan.databases:
            database = self.databases.databases.load(planned.database_id)
            if database is None or database.status in (DatabaseStatus.FAILED, DatabaseStatus.DELETING, DatabaseStatus.DELETED):
                state = "gone" if database is None else f"{database.status}: {database.reason or 'no reason'}"
                self.snapshots.mark_fork(fork.id, FAILED, reason=f"database '{planned.name}' is {state}; nothing was restored")
                return
            if database.status == DatabaseStatus.PROVISIONING:
                raise RetryLater(f"waiting for database '{planned.name}' to be provisioned", delay_s=self.database_wait_s)
        self.snapshots.mark_fork(fork.id, RESTORING)
        try:
            with self._transient():
                self._fill(fork, snapshot)
        except FAILURES as exc:
            reason = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            self.snapshots.mark_fork(fork.id, FAILED, reason=reason)
            log.warning("snapshot_fork_failed", fork_id=fork.id, reason=reason)
            return
        if not fork.plan.deploy:
            self.snapshots.mark_fork(fork.id, SUCCEEDED)
            return
        app = self.deployments.app(fork.tenant_id, fork.app_id)
        deployment_id = self.deployments.new_id()
        source = {"image_id": snapshot.image_id, "image_tag": snapshot.image_tag, "snapshot_id": snapshot.id}
        try:
            with self.snapshots.db.write():  # the deployment and the fork's new state together
                self.deployments.create(fork.tenant_id, app, deployment_id, IMAGE, source)
                self.snapshots.mark_fork(fork.id, DEPLOYING, deployment_id=deployment_id)
        except DomainError as exc:  # the tenant's compute quota, a volume full: the data is in, nothing runs
            self.snapshots.mark_fork(fork.id, FAILED, reason=f"filled, but not deployed: {exc.detail}")
            return
        log.info("snapshot_fork_filled", fork_id=fork.id, deployment_id=deployment_id)

    def _fill(self, fork: Fork, snapshot: Snapshot) -> None:
        self.snapshots.verify(snapshot)  # again: a file may have changed since the fork was asked for
        folder = self.snapshots.directory(snapshot.tenant_id, snapshot.id)
        digests = {f.path: f.sha256 for f in snapshot.files}
        if fork.plan.volumes:
            tenant = self.tenant_name(fork.tenant_id)
            app = self.deployments.app(fork.tenant_id, fork.app_id)
            current = {v.id: v for v in self.volumes.for_app(fork.app_id)}
            with self.locks.hold(fork.app_id):
                for planned in fork.plan.volumes:
                    volume = current.get(planned.volume_id)
                    if volume is None:
                        raise JobFailed(f"volume '{planned.name}' of the fork was deleted before it was filled")
                    mount = VolumeMount(volume.id, volume.mount_path, volume.enforced)
                    self.runtime.import_volume(
                        volume=mount, tenant=tenant, app=app.name, image=snapshot.image_id, source=folder / planned.file
                    )
        for database in fork.plan.databases:
            self.databases.restore_file(database.database_id, folder / database.file, sha256=digests[database.file])


def _file_doc(f: SnapshotFile) -> dict[str, object]:
    return {"path": f.path, "kind": f.kind, "ref": f.ref, "size": f.size, "sha256": f.sha256}
