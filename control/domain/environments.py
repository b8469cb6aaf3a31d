"""Environments (sandboxes): leased containers a tenant execs commands in, pushes files to
and pulls results from. This module holds the rules and the rows; ``control.jobs.environments``
drives the containers.

An environment starts from a platform image (``MOORAGE_ENVIRONMENT_IMAGES``) or from an
app's current release (``from_app``), optionally with that app's env vars and database links
(``with_app_env``). Its lease runs ``lease_s`` from creation; ``renew`` extends it from now,
never past ``lifetime_ends_at`` (creation + ``MOORAGE_ENVIRONMENT_LIFETIME_MAX_S``). Once the
lease has passed, the reconciler removes its container and its row.

Its row is written (``starting``) and committed before its container is made, and turned
``ready`` once the container runs: a container with no row is therefore always an orphan
(its create failed, its lease ran out, it was deleted) and the reconciler removes it. Each
of these writes commits at once (``write_now``), so no container start, and no exec, runs
inside a database write transaction.
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from control.clock import utcnow
from control.domain.compute import ComputeQuota
from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.records import Environment, Page
from control.domain.runs import current_release
from control.ids import new_id
from control.store.database import Store
from control.store.models import EnvironmentRow
from control.store.repositories.apps import AppRepository
from control.store.repositories.environments import EnvironmentRepository

STARTING, READY = "starting", "ready"
PATH_MAX_CHARS = 1024
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class EnvironmentConfig:
    images: tuple[str, ...] = ("moorage/python:3-bookworm", "moorage/busybox:latest")
    lease_default_s: int = 900
    lease_max_s: int = 3600
    lifetime_max_s: int = 86400
    millicpus_default: int = 1000
    millicpus_max: int = 4000
    memory_mb_default: int = 1024
    memory_mb_max: int = 8192
    exec_timeout_default_s: int = 300
    exec_timeout_max_s: int = 3600
    output_max_bytes: int = 1024 * 1024
    upload_max_bytes: int = 256 * 1024 * 1024
    download_max_bytes: int = 64 * 1024 * 1024
    starting_grace_s: int = 300  # a row still `starting` this long after creation lost its create (a crash)


@dataclass(frozen=True)
class EnvironmentSource:
    """What an environment's container is made from, checked."""

    image: str
    app_id: str | None = None
    app_name: str | None = None
    release_id: str | None = None
    with_app_env: bool = False


def _invalid(field: str, message: str, detail: str) -> Invalid:
    return Invalid(detail, errors=[{"field": field, "message": message}])


def check_path(path: str, field: str = "path") -> str:
    """An absolute path in the environment, normalised; no NUL, no control characters."""
    if not path.startswith("/") or len(path) > PATH_MAX_CHARS or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        message = f"an absolute path (at most {PATH_MAX_CHARS} characters, no control characters), e.g. {WORKSPACE}"
        raise _invalid(field, message, f"'{field}' must be {message}; got {path[:100]!r}.")
    return posixpath.normpath(path).replace("//", "/")


class EnvironmentService:
    def __init__(
        self, db: Store, config: EnvironmentConfig, quota: ComputeQuota | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.config = config
        self.quota = quota
        self.clock = clock

    # -- rules --------------------------------------------------------------------------
    def source(self, tenant_id: str, image: str | None, from_app: str | None, with_app_env: bool) -> EnvironmentSource:
        if (image is None) == (from_app is None):
            raise _invalid(
                "image",
                "exactly one of image or from_app",
                f"Name exactly one of 'image' (one of {list(self.config.images)}) or 'from_app' (an app with a release).",
            )
        if image is not None:
            if with_app_env:
                raise _invalid(
                    "with_app_env",
                    "only with from_app",
                    "'with_app_env' adds an app's env vars and links: it needs 'from_app' naming that app.",
                )
            if image not in self.config.images:
                images = list(self.config.images)
                raise _invalid(
                    "image", f"one of {images}", f"'image' must be one of {images} (MOORAGE_ENVIRONMENT_IMAGES); got {image!r}."
                )
            return EnvironmentSource(image=image)
        assert from_app is not None
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(from_app)
            if app is None:
                raise NotFound.of("app", from_app)
            release = current_release(session, app)
        if release is None:
            raise Conflict(
                f"App '{app.name}' has no release yet, so there is no image to start the environment from: deploy it "
                f"first (POST /v1/apps/{app.name}/deployments), or name a platform 'image' instead.",
                code="no-release",
            )
        return EnvironmentSource(release.image_id, app.id, app.name, release.id, with_app_env)

    def lease(self, value: int | None, field: str = "lease_s") -> int:
        if value is None:
            return min(self.config.lease_default_s, self.config.lease_max_s)
        if not 1 <= value <= self.config.lease_max_s:
            message = f"between 1 and {self.config.lease_max_s} seconds (MOORAGE_ENVIRONMENT_LEASE_MAX_S)"
            raise _invalid(field, message, f"'{field}' must be {message}; got {value}.")
        return value

    def millicpus(self, cpu: float | None) -> int:
        if cpu is None:
            return self.config.millicpus_default
        milli = round(cpu * 1000)
        if not 10 <= milli <= self.config.millicpus_max:
            message = f"between 0.01 and {self.config.millicpus_max / 1000:g} CPUs (MOORAGE_ENVIRONMENT_CPU_MAX)"
            raise _invalid("cpu", message, f"'cpu' must be {message}; got {cpu}.")
        return milli

    def memory_mb(self, value: int | None) -> int:
        if value is None:
            return self.config.memory_mb_default
        if not 64 <= value <= self.config.memory_mb_max:
            message = f"between 64 and {self.config.memory_mb_max} MiB (MOORAGE_ENVIRONMENT_MEMORY_MB_MAX)"
            raise _invalid("memory_mb", message, f"'memory_mb' must be {message}; got {value}.")
        return value

    def exec_timeout(self, value: int | None) -> int:
        if value is None:
            return min(self.config.exec_timeout_default_s, self.config.exec_timeout_max_s)
        if not 1 <= value <= self.config.exec_timeout_max_s:
            message = f"between 1 and {self.config.exec_timeout_max_s} seconds (MOORAGE_ENVIRONMENT_EXEC_TIMEOUT_MAX_S)"
            raise _invalid("timeout_s", message, f"'timeout_s' must be {message}; got {value}.")
        return value

    # -- rows ---------------------------------------------------------------------------
    def add(self, tenant_id: str, source: EnvironmentSource, lease_s: int, millicpus: int, memory_mb: int) -> Environment:
        """The ``starting`` row, committed at once (its quota checked in the same transaction)."""
        now = self.clock()
        lifetime_end = now + timedelta(seconds=self.config.lifetime_max_s)
        with self.db.write_now() as session:
            if self.quota is not None:
                self.quota.check_new_environment(session, tenant_id, millicpus, memory_mb)
            return EnvironmentRepository(session, tenant_id).add(
                EnvironmentRow(
                    id=new_id("env"),
                    tenant_id=tenant_id,
                    app_id=source.app_id,
                    image=source.image,
                    release_id=source.release_id,
                    with_app_env=source.with_app_env,
                    status=STARTING,
                    millicpus=millicpus,
                    memory_mb=memory_mb,
                    lease_expires_at=min(now + timedelta(seconds=lease_s), lifetime_end),
                    lifetime_ends_at=lifetime_end,
                    created_at=now,
                )
            )

    def ready(self, environment_id: str, container_id: str) -> Environment | None:
        """``starting → ready``; None when the row is gone (deleted, expired meanwhile)."""
        with self.db.write_now() as session:
            row = EnvironmentRepository(session, None).row(environment_id)
            if row is None:
                return None
            row.status, row.container_id = READY, container_id
            session.flush()
            return EnvironmentRepository(session, None).get(environment_id)

    def get(self, tenant_id: str, environment_id: str) -> Environment:
        with self.db.read() as session:
            found = EnvironmentRepository(session, tenant_id).get(environment_id)
        if found is None:
            raise NotFound.of("environment", environment_id)
        return found

    def load(self, environment_id: str) -> Environment | None:
        """Platform-internal (the exec's watch, the reconciler): no tenant scope."""
        with self.db.read() as session:
            return EnvironmentRepository(session, None).get(environment_id)

    def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[Environment]:
        with self.db.read() as session:
            return EnvironmentRepository(session, tenant_id).list(limit=limit, cursor=cursor)

    def remove(self, tenant_id: str | None, environment_id: str) -> Environment | None:
        """The row gone, committed at once; what it was, or None when it was gone already."""
        with self.db.write_now() as session:
            repo = EnvironmentRepository(session, tenant_id)
            found = repo.get(environment_id)
            if found is not None:
                repo.remove(environment_id)
            return found

    def renew(self, tenant_id: str, environment_id: str, lease_s: int | None) -> Environment:
        seconds = self.lease(lease_s)
        with self.db.write() as session:
            repo = EnvironmentRepository(session, tenant_id)
            row = repo.row(environment_id)
            now = self.clock()
            if row is None or row.lease_expires_at <= now:  # expired: the reconciler is about to remove it
                raise NotFound.of("environment", environment_id)
            if row.lease_expires_at >= row.lifetime_ends_at:
                raise Conflict(
                    f"Environment {environment_id} reached its longest lifetime ({self.config.lifetime_max_s}s after its "
                    f"creation, MOORAGE_ENVIRONMENT_LIFETIME_MAX_S): its lease ends at {row.lifetime_ends_at:%Y-%m-%dT%H:%M:%SZ} "
                    "and cannot be extended. Pull what you need and create a new environment.",
                    code="lifetime-reached",
                )
            row.lease_expires_at = max(row.lease_expires_at, min(now + timedelta(seconds=seconds), row.lifetime_ends_at))
            session.flush()
            found = repo.get(environment_id)
            assert found is not None
            return found

    # -- the reconciler's ------------------------------------------------------------------
    def expired(self) -> builtins.list[Environment]:
        with self.db.read() as session:
            return EnvironmentRepository(session, None).expired(self.clock())

    def stuck_starting(self) -> builtins.list[Environment]:
        before = self.clock() - timedelta(seconds=self.config.starting_grace_s)
        with self.db.read() as session:
            return EnvironmentRepository(session, None).starting_since(before)

    def known(self, environment_ids: builtins.list[str]) -> set[str]:
        if not environment_ids:
            return set()
        with self.db.read() as session:
            return EnvironmentRepository(session, None).ids(environment_ids)
