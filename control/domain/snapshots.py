"""Snapshots of an app and forks of them: the rules (what a snapshot holds, the storage quota,
checksums, deletion) and the fork, which makes a new app from a snapshot.

A snapshot is taken of the app's current release: its image (kept by the image lifecycle
while the snapshot exists), the app's settings, the release's env vars (opened and sealed
again under the snapshot's own binding: never a copied ciphertext) and links (engine and env
name), recorded when it is requested; its data (a tar of each volume, a dump of each linked
database) is read by the ``snapshot.capture`` job (``control.jobs.snapshots``). Files live
under ``<data_dir>/snapshots/<tenant id>/<snapshot id>/``; ``manifest.json`` lists each with
its SHA-256, and the row keeps the manifest's SHA-256, so a file and the manifest rewritten
together are still found out.

A fork verifies every checksum first (409 ``snapshot-corrupt`` naming the file, nothing made),
then, in one unit of work: a new app with the snapshot's settings, its env vars sealed under
the new app's binding, new volumes of the same names and sizes, new databases of the same
engines (new credentials) linked under the same env names, and a ``snapshot.fork`` job that
fills the volumes from the tars and the databases from the dumps, then deploys a release of
the snapshot's image (no build). ``fork_databases`` is the database part alone, for another
app (a preview's own databases).
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from control.clock import utcnow
from control.domain.apps import AppService
from control.domain.databases import DatabaseService, Status
from control.domain.env import EnvService, EnvValue
from control.domain.errors import Conflict, NotFound, QuotaExceeded
from control.domain.jobs import JobEnqueuer
from control.domain.links import LinkService
from control.domain.records import App, Page
from control.domain.snapshot_records import (
    Fork,
    ForkedDatabase,
    ForkedVolume,
    ForkPlan,
    Snapshot,
    SnapshotFile,
    StoredSnapshotVar,
    var_aad,
)
from control.domain.volumes import VolumeService
from control.ids import new_id
from control.security.keyring import KeyringError, ReloadingKeyring
from control.store.database import Store
from control.store.repositories.apps import AppRepository
from control.store.repositories.databases import DatabaseRepository
from control.store.repositories.deployments import DeploymentRepository
from control.store.repositories.releases import AppRuntimeRepository, ReleaseRepository
from control.store.repositories.snapshots import SnapshotRepository, plan_json
from control.store.repositories.tenants import TenantRepository
from control.store.repositories.volumes import StorageLimitsRepository, VolumeRepository

log = structlog.get_logger("moorage.snapshots")

CAPTURE_JOB = "snapshot.capture"
FORK_JOB = "snapshot.fork"
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
RESTORING, DEPLOYING = "restoring", "deploying"
MANIFEST = "manifest.json"
MiB = 2**20


class SnapshotCorrupt(Conflict):
    """A snapshot file does not match the checksum its manifest (or the manifest, the row) records."""

    title = "Snapshot corrupt"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="snapshot-corrupt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_body(snapshot_id: str, files: tuple[SnapshotFile, ...] | list[SnapshotFile]) -> bytes:
    doc = {
        "snapshot": snapshot_id,
        "files": [{"path": f.path, "kind": f.kind, "ref": f.ref, "size": f.size, "sha256": f.sha256} for f in files],
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class SnapshotConfig:
    max_total_mb: int = 20480  # per tenant: every snapshot's files together
    max_attempts: int = 2


class SnapshotService:
    def __init__(
        self,
        db: Store,
        keyring: ReloadingKeyring,
        queue: JobEnqueuer,
        data_dir: Path,
        *,
        apps: AppService,
        env_vars: EnvService,
        volumes: VolumeService,
        databases: DatabaseService,
        links: LinkService,
        config: SnapshotConfig = SnapshotConfig(),
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.queue = queue
        self.root = data_dir / "snapshots"
        self.apps = apps
        self.env_vars = env_vars
        self.volumes = volumes
        self.databases = databases
        self.links = links
        self.config = config

    # -- files -------------------------------------------------------------------------------
    def directory(self, tenant_id: str, snapshot_id: str) -> Path:
        return self.root / tenant_id / snapshot_id

    def verify(self, snapshot: Snapshot) -> None:
        """Every file against the manifest, the manifest against the row; ``SnapshotCorrupt``
        naming the first that does not match (or is missing)."""
        folder = self.directory(snapshot.tenant_id, snapshot.id)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise SnapshotCorrupt(f"Snapshot {snapshot.id} has lost its {MANIFEST}; it cannot be forked. Delete it.")
        if sha256_file(manifest) != snapshot.manifest_sha256:
            raise SnapshotCorrupt(
                f"Snapshot {snapshot.id}: {MANIFEST} does not match the checksum recorded when it was taken "
                "(it was altered); nothing was made. Delete the snapshot and take a new one."
            )
        for entry in snapshot.files:
            path = folder / entry.path
            if not path.is_file():
                raise SnapshotCorrupt(f"Snapshot {snapshot.id}: file {entry.path} is missing; nothing was made.")
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise SnapshotCorrupt(
                    f"Snapshot {snapshot.id}: file {entry.path} ({entry.kind} {entry.ref}) does not match its checksum "
                    f"(expected sha256 {entry.sha256[:16]}..., got {actual[:16]}...); it is corrupt, so nothing was made. "
                    "Delete the snapshot and take a new one."
                )

    # -- quota -------------------------------------------------------------------------------
    def limit_mb(self, session_repo: StorageLimitsRepository, tenant_id: str) -> int:
        overrides = session_repo.get(tenant_id)
        return self.config.max_total_mb if overrides.max_snapshot_mb is None else overrides.max_snapshot_mb

    def usage(self, tenant_id: str) -> tuple[int, int]:
        """(bytes the tenant's snapshots hold, the limit in MiB)."""
        with self.db.read() as session:
            used = SnapshotRepository(session, tenant_id).stored_bytes()
            return used, self.limit_mb(StorageLimitsRepository(session), tenant_id)

    def check_fits(self, tenant_id: str, more_bytes: int = 0) -> None:
        used, limit = self.usage(tenant_id)
        if used + more_bytes > limit * MiB or (more_bytes == 0 and used >= limit * MiB):
            raise QuotaExceeded(
                f"Quota exceeded: this tenant's snapshots hold {used / MiB:.1f} MiB"
                + (f" and this one {more_bytes / MiB:.1f} MiB more" if more_bytes else "")
                + f"; the limit is {limit} MiB of snapshots. Delete one with DELETE /v1/snapshots/{{snapshot}}, "
                "or ask an operator to raise max_snapshot_mb (PUT /v1/tenants/{id}/storage-limits)."
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, tenant_id: str, app_ref: str) -> Snapshot:
        """Record what the app's current release is made of and queue the capture of its data."""
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
            if app is None:
                raise NotFound.of("app", app_ref)
            release_id = AppRuntimeRepository(session).current_release_id(app.id)
            release = ReleaseRepository(session, tenant_id).get(release_id) if release_id else None
            if release is None:
                raise Conflict(
                    f"App '{app.name}' has no current release to snapshot; deploy it first "
                    f"(POST /v1/apps/{app.name}/deployments).",
                    code="no-release",
                )
            volumes = VolumeRepository(session, tenant_id).for_app(app.id)
            databases = DatabaseRepository(session, tenant_id)
            config_links = release.config.links if release.config is not None else ()
            linked = [(link.env_name, databases.get(link.database_id)) for link in config_links]
        self.check_fits(tenant_id)
        for env_name, database in linked:
            if database is None or database.status != Status.AVAILABLE:
                state = "gone" if database is None else database.status
                raise Conflict(
                    f"The database linked as {env_name} is {state}; a snapshot dumps every linked database, "
                    "so it needs each one 'available'. Poll GET /v1/databases/{db} and retry.",
                    code="database-not-available",
                )
        if release.config is not None:
            values = self.env_vars.open_config(tenant_id, app.id, release.config)
            secret = {v.name: v.secret for v in release.config.vars}
        else:  # made before releases kept their config: the app's env of today
            values = self.env_vars.resolve(tenant_id, app.id)
            secret = {v.name: v.secret for v in self.env_vars.list(tenant_id, app.id).vars}
        snapshot_id = new_id("snap")
        sealed = {name: self.keyring.seal(value, var_aad(tenant_id, snapshot_id, name)) for name, value in values.items()}
        settings = {
            "port": release.port,
            "health_check_path": release.health_check_path,
            "builder": app.builder,
            "description": app.description,
        }
        links = [
            {"env_name": env_name, "database_id": db.id, "database_name": db.name, "engine": db.engine}
            for env_name, db in linked
            if db is not None
        ]
        volume_doc = [{"volume_id": v.id, "name": v.name, "mount_path": v.mount_path, "size_mb": v.size_mb} for v in volumes]
        with self.db.write() as session:
            repo = SnapshotRepository(session, tenant_id)
            repo.add(
                id=snapshot_id,
                app_id=app.id,
                app_name=app.name,
                status=PENDING,
                release_id=release.id,
                release_number=release.number,
                image_id=release.image_id,
                image_tag=release.image_tag,
                settings=json.dumps(settings),
                links=json.dumps(links),
                volumes=json.dumps(volume_doc),
            )
            for name, blob in sealed.items():
                repo.add_var(
                    snapshot_id,
                    new_id("sev"),
                    name,
                    ciphertext=blob.blob,
                    master_key_id=blob.key_id,
                    secret=secret.get(name, True),
                )
            self.queue.enqueue(CAPTURE_JOB, snapshot_id, tenant_id=tenant_id, max_attempts=self.config.max_attempts)
            created = repo.get(snapshot_id)
        assert created is not None
        log.info("snapshot_requested", snapshot_id=snapshot_id, app_id=app.id, release=release.name)
        return created

    def list(self, tenant_id: str, *, app_ref: str | None = None, limit: int, cursor: str | None) -> Page[Snapshot]:
        with self.db.read() as session:
            app_id = None
            if app_ref is not None:
                app = AppRepository(session, tenant_id).get(app_ref)
                if app is None:
                    raise NotFound.of("app", app_ref)
                app_id = app.id
            return SnapshotRepository(session, tenant_id).list(app_id=app_id, limit=limit, cursor=cursor)

    def get(self, tenant_id: str, snapshot_id: str) -> Snapshot:
        with self.db.read() as session:
            found = SnapshotRepository(session, tenant_id).get(snapshot_id)
        if found is None:
            raise NotFound.of("snapshot", snapshot_id)
        return found

    def delete(self, tenant_id: str, snapshot_id: str) -> Snapshot:
        """The row now, its files once that is committed; refused while its capture or a fork
        from it is still reading the files."""
        with self.db.write() as session:
            repo = SnapshotRepository(session, tenant_id)
            snapshot = repo.get(snapshot_id)
            if snapshot is None:
                raise NotFound.of("snapshot", snapshot_id)
            busy = "being taken" if not snapshot.is_finished else None
            if busy is None and repo.unfinished_forks(snapshot.id):
                busy = "being forked"
            if busy is not None:
                raise Conflict(
                    f"Snapshot {snapshot.id} is {busy}; delete it once that has finished (poll it).", code="snapshot-busy"
                )
            repo.delete(snapshot.id)
        folder = self.directory(tenant_id, snapshot.id)
        self.db.after_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
        log.info("snapshot_deleted", snapshot_id=snapshot.id)
        return snapshot

    # -- fork --------------------------------------------------------------------------------
    def fork(self, tenant_id: str, snapshot_id: str, name: str) -> Fork:
        """A new app ``name`` from the snapshot (see the module's docstring)."""
        snapshot = self._forkable(tenant_id, snapshot_id)
        with self.db.write():  # one unit of work: all of it is made, or none
            return self._fork_new_app(tenant_id, snapshot, name)

    def _fork_new_app(self, tenant_id: str, snapshot: Snapshot, name: str) -> Fork:
        app = self.apps.create(
            tenant_id,
            name,
            port=int(str(snapshot.settings.get("port", 8080))),
            health_check_path=str(snapshot.settings.get("health_check_path", "/")),
            builder=str(snapshot.settings.get("builder", "auto")),
            description=str(snapshot.settings.get("description", "")),
        )
        values = self.open_vars(snapshot)
        if values:
            self.env_vars.replace(tenant_id, app.id, values)
        databases = self._databases_for(snapshot, app)
        # Volumes last: their storage is made outside the database, so every refusal that can
        # come (a name taken, a database quota) comes before any of it is made.
        forked_volumes: builtins.list[ForkedVolume] = []
        try:
            for volume in snapshot.volumes:
                made = self.volumes.create(tenant_id, app.id, volume.name, volume.mount_path, volume.size_mb)
                forked_volumes.append(ForkedVolume(made.id, made.name, self._file_of(snapshot, "volume", volume.name)))
            return self._fork_row(snapshot, app, tuple(forked_volumes), databases, deploy=True)
        except BaseException:
            for forked in forked_volumes:
                self.volumes.storage.remove(forked.volume_id)
            raise

    def fork_databases(self, tenant_id: str, snapshot_id: str, app_ref: str) -> Fork:
        """New databases of the snapshot's engines for the app ``app_ref`` (new credentials,
        linked under the snapshot's env names) and a job that restores the snapshot's dumps into
        them; no volume, no deployment. Poll the fork (``get_fork``) until ``succeeded``."""
        snapshot = self._forkable(tenant_id, snapshot_id)
        with self.db.write() as session:
            app = AppRepository(session, tenant_id, previews=True).get(app_ref)  # a preview's, by its own id
            if app is None:
                raise NotFound.of("app", app_ref)
            return self._fork_row(snapshot, app, (), self._databases_for(snapshot, app), deploy=False)

    def fork_in_progress(self, app_id: str) -> Fork | None:
        """A databases-only fork for ``app_id`` not yet filled (its deploy waits for it), or
        the one that failed (its deploy fails saying why)."""
        with self.db.read() as session:
            forks = SnapshotRepository(session, None).forks_of_app(app_id)
        return next((f for f in forks if f.status in (PENDING, RESTORING, FAILED)), None)

    def _forkable(self, tenant_id: str, snapshot_id: str) -> Snapshot:
        snapshot = self.get(tenant_id, snapshot_id)
        if snapshot.status != SUCCEEDED:
            raise Conflict(
                f"Snapshot {snapshot.id} is {snapshot.status}; only a snapshot that succeeded can be forked."
                + (f" ({snapshot.reason})" if snapshot.reason else " Poll it and retry."),
                code="snapshot-not-ready",
            )
        self.verify(snapshot)  # before anything is made
        return snapshot

    def _databases_for(self, snapshot: Snapshot, app: App) -> tuple[ForkedDatabase, ...]:
        made = []
        for link in snapshot.links:
            name = f"{app.name}-{link.database_name}"[:60].rstrip("-")
            database = self.databases.create(snapshot.tenant_id, name, link.engine)
            self.links.create(snapshot.tenant_id, app.id, database.id, link.env_name, previews=True)  # app: resolved
            made.append(
                ForkedDatabase(
                    database.id, database.name, link.engine, link.env_name, self._file_of(snapshot, "database", link.env_name)
                )
            )
        return tuple(made)

    def _fork_row(
        self,
        snapshot: Snapshot,
        app: App,
        volumes: tuple[ForkedVolume, ...],
        databases: tuple[ForkedDatabase, ...],
        *,
        deploy: bool,
    ) -> Fork:
        plan = ForkPlan(volumes, databases, deploy)
        with self.db.write() as session:
            fork = SnapshotRepository(session, snapshot.tenant_id).add_fork(
                id=new_id("frk"), snapshot_id=snapshot.id, app_id=app.id, status=PENDING, plan=plan_json(plan)
            )
            self.queue.enqueue(FORK_JOB, fork.id, tenant_id=snapshot.tenant_id, max_attempts=self.config.max_attempts)
        log.info("snapshot_fork_requested", snapshot_id=snapshot.id, fork_id=fork.id, app_id=app.id, deploy=deploy)
        return fork

    @staticmethod
    def _file_of(snapshot: Snapshot, kind: str, ref: str) -> str:
        for entry in snapshot.files:
            if entry.kind == kind and entry.ref == ref:
                return entry.path
        raise SnapshotCorrupt(f"Snapshot {snapshot.id} lists no file for {kind} {ref}; nothing was made.")

    def open_vars(self, snapshot: Snapshot) -> dict[str, EnvValue]:
        with self.db.read() as session:
            stored = SnapshotRepository(session, snapshot.tenant_id).vars(snapshot.id)
        return {var.name: EnvValue(self._open(var), var.secret) for var in stored}

    def _open(self, var: StoredSnapshotVar) -> str:
        try:
            return self.keyring.open(var.ciphertext, var_aad(var.tenant_id, var.snapshot_id, var.name))
        except KeyringError as exc:
            raise Conflict(
                f"Env var {var.name} of snapshot {var.snapshot_id} cannot be opened ({exc.reason}, master key "
                f"'{var.master_key_id}'); nothing was made. An operator must load that key.",
                code="secret-integrity-failure",
            ) from None

    def get_fork(self, tenant_id: str, snapshot_id: str, fork_id: str) -> Fork:
        with self.db.read() as session:
            repo = SnapshotRepository(session, tenant_id)
            if repo.row(snapshot_id) is None:
                raise NotFound.of("snapshot", snapshot_id)
            fork = repo.fork(fork_id, snapshot_id)
            if fork is None:
                raise NotFound.of("fork", fork_id)
            deployment = (
                DeploymentRepository(session, tenant_id).get(fork.deployment_id)
                if fork.status == DEPLOYING and fork.deployment_id
                else None
            )
        if deployment is not None and deployment.status == "running":
            return replace(fork, status=SUCCEEDED)
        if deployment is not None and deployment.status in ("failed", "cancelled"):
            return replace(fork, status=FAILED, reason=f"its deployment {deployment.id} {deployment.status}: {deployment.reason}")
        return fork

    # -- for jobs and the image lifecycle (platform-internal) ---------------------------------
    def load(self, snapshot_id: str) -> Snapshot | None:
        with self.db.read() as session:
            return SnapshotRepository(session, None).get(snapshot_id)

    def load_fork(self, fork_id: str) -> Fork | None:
        with self.db.read() as session:
            return SnapshotRepository(session, None).fork(fork_id)

    def mark(self, snapshot_id: str, status: str, *, reason: str | None = None, **fields: object) -> bool:
        with self.db.write() as session:
            row = SnapshotRepository(session, None).row(snapshot_id)
            if row is None:
                return False
            row.status, row.reason = status, reason
            if status in (SUCCEEDED, FAILED):
                row.finished_at = utcnow()
            for field_name, value in fields.items():
                setattr(row, field_name, value)
            return True

    def mark_fork(self, fork_id: str, status: str, *, reason: str | None = None, deployment_id: str | None = None) -> None:
        with self.db.write() as session:
            row = SnapshotRepository(session, None).fork_row(fork_id)
            if row is None:
                return
            row.status, row.reason = status, reason
            if deployment_id is not None:
                row.deployment_id = deployment_id
            if status in (SUCCEEDED, FAILED, DEPLOYING):
                row.finished_at = utcnow()

    def kept_images(self, app_id: str | None = None) -> set[str]:
        with self.db.read() as session:
            return SnapshotRepository(session, None).kept_images(app_id)

    def bytes_by_tenant(self) -> dict[str, int]:
        with self.db.read() as session:
            return SnapshotRepository(session, None).bytes_by_tenant()

    def tenant_exists(self, tenant_id: str) -> bool:
        with self.db.read() as session:
            return TenantRepository(session).get(tenant_id) is not None

    def remove_orphan_files(self) -> builtins.list[str]:
        """Snapshot directories no row accounts for (the app or tenant was deleted, a capture
        was cut short after its row went): removed. What was removed, in words."""
        if not self.root.is_dir():
            return []
        with self.db.read() as session:
            known = SnapshotRepository(session, None).ids()
        removed = []
        for tenant_dir in self.root.iterdir():
            for folder in tenant_dir.iterdir() if tenant_dir.is_dir() else ():
                if folder.name.startswith("snap_") and folder.name not in known:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"snapshot files {folder.name}")
        return removed
