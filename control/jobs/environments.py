"""Environments' containers (``Sandboxes``): create, exec, files, delete, and the
reconciler's sweep of expired leases and orphans. The rules and rows are
``control.domain.environments``'; the containers come from the runtime port
(``EnvironmentRuntime``).

Creating goes through one call, ``Sandboxes.start``: a container the warm pool
(``control.jobs.environment_pool``) started ahead of time when it has one for the spec, else
the runtime's ``start_environment``. A base-image environment's container gets no env vars of
its own (each exec passes its ``env``), so a pooled one can serve it.

An exec runs outside any database transaction. It watches its environment twice a second:
once the row is gone (DELETE) or its lease has passed, the command is killed and the answer
says why.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from control.domain.audit import AuditService
from control.domain.databases import CredentialsUnreadable
from control.domain.env import EnvService, SecretUnreadable
from control.domain.environments import READY, EnvironmentConfig, EnvironmentService, EnvironmentSource, check_path
from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.links import LinkService
from control.domain.records import Environment
from control.domain.runs import check_command
from control.jobs.environment_names import environment_container_name, environment_id_of
from control.jobs.environment_pool import WarmPool
from control.jobs.runtime_port import AppContainer, EnvironmentRuntime, EnvironmentSpec, ExecOutcome, ExecRefused, FilesTooLarge
from runtime.archive import ExtractLimits, extract_tar_gz

log = structlog.get_logger("moorage.environments")
CUT = "[{stream} cut at {limit} bytes]"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_ms: int
    reason: str | None  # why it has no exit code: killed at its timeout, its environment deleted or expired


class BoundedOutput:
    """An exec's stdout and stderr, each kept up to ``limit`` bytes, then cut and marked;
    ``forward`` (an SSE stream) gets what is kept as it comes, as text."""

    def __init__(self, limit: int, forward: Callable[[str, str], None] | None = None) -> None:
        self.limit = limit
        self.forward = forward
        self._kept = {"stdout": bytearray(), "stderr": bytearray()}
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self._kept}
        self.cut: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, stream: str, data: bytes) -> None:
        with self._lock:
            kept = self._kept[stream]
            if stream in self.cut:
                return
            room = self.limit - len(kept)
            piece = data[:room]
            kept.extend(piece)
            if len(data) > room:
                self.cut.add(stream)
            text = self._decoders[stream].decode(bytes(piece), final=stream in self.cut)
            if stream in self.cut:
                text += ("\n" if text and not text.endswith("\n") else "") + CUT.format(stream=stream, limit=self.limit) + "\n"
        if self.forward is not None and text:
            self.forward(stream, text)

    def text(self, stream: str) -> str:
        body = bytes(self._kept[stream]).decode("utf-8", "replace")
        if stream in self.cut:
            body += ("\n" if body and not body.endswith("\n") else "") + CUT.format(stream=stream, limit=self.limit) + "\n"
        return body


@dataclass
class Sandboxes:
    environments: EnvironmentService
    runtime: EnvironmentRuntime
    tenant_name: Callable[[str], str]
    env_vars: EnvService | None = None
    links: LinkService | None = None
    audit: AuditService | None = None
    pool: WarmPool | None = None  # containers started ahead of time, claimed before a cold start
    _upload_limits: ExtractLimits = field(default_factory=ExtractLimits)

    @property
    def config(self) -> EnvironmentConfig:
        return self.environments.config

    # -- create / delete -------------------------------------------------------------------
    def create(
        self,
        tenant_id: str,
        *,
        image: str | None,
        from_app: str | None,
        with_app_env: bool,
        lease_s: int | None,
        cpu: float | None,
        memory_mb: int | None,
    ) -> Environment:
        svc = self.environments
        source = svc.source(tenant_id, image, from_app, with_app_env)
        lease, millicpus, memory = svc.lease(lease_s), svc.millicpus(cpu), svc.memory_mb(memory_mb)
        env = self._app_env(tenant_id, source)  # before the row: an unreadable secret makes nothing
        row = svc.add(tenant_id, source, lease, millicpus, memory)
        spec = EnvironmentSpec(row.id, self.tenant_name(tenant_id), source.image, millicpus, memory, env)
        try:
            container = self.start(spec)
        except ExecRefused as exc:
            svc.remove(None, row.id)
            raise Invalid(
                f"The environment could not start: {exc}. Nothing was kept; choose another image.",
                code="environment-start-failed",
            ) from None
        except BaseException:
            svc.remove(None, row.id)
            self._remove_named(row.id)
            raise
        ready = svc.ready(row.id, container.id)
        if ready is None:  # deleted while it started
            self.runtime.remove(container.id)
            raise NotFound.of("environment", row.id)
        log.info("environment_created", environment_id=row.id, tenant_id=tenant_id, image=source.image)
        return ready

    def start(self, spec: EnvironmentSpec) -> AppContainer:
        """The one way an environment's container is made: a pooled one when the pool has one."""
        pooled = self.pool.take(spec) if self.pool is not None else None
        return pooled or self.runtime.start_environment(spec)

    def delete(self, tenant_id: str, environment_id: str) -> Environment:
        gone = self.environments.remove(tenant_id, environment_id)
        if gone is None:
            raise NotFound.of("environment", environment_id)
        self._remove_container(gone)
        return gone

    # -- exec -------------------------------------------------------------------------------
    def exec(
        self,
        tenant_id: str,
        environment_id: str,
        command: Sequence[str],
        *,
        timeout_s: int | None,
        stdin: bytes | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        forward: Callable[[str, str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ExecResult:
        found = self.check_exec(tenant_id, environment_id, command, timeout_s, workdir)
        argv, timeout = check_command(command), self.environments.exec_timeout(timeout_s)
        where = check_path(workdir, "workdir") if workdir is not None else None
        out = BoundedOutput(self.config.output_max_bytes, forward)
        why: list[str] = []

        def cancelled() -> bool:
            if stop is not None and stop.is_set():
                why.append("the client went away; the command was killed")
                return True
            now = self.environments.load(environment_id)
            if now is None:
                why.append("the environment was deleted while the command ran; it was killed")
                return True
            if now.lease_expires_at <= self.environments.clock():
                why.append(
                    "the environment's lease ran out while the command ran; it was killed "
                    "(renew with POST /v1/environments/{env}/renew before the lease ends)"
                )
                return True
            return False

        assert found.container_id is not None
        try:
            outcome = self.runtime.exec_in(
                found.container_id,
                argv,
                stdin=stdin,
                workdir=where,
                env=dict(env or {}),
                timeout=float(timeout),
                on_output=out,
                cancelled=cancelled,
            )
        except ExecRefused as exc:
            if self.environments.load(environment_id) is None:
                raise NotFound.of("environment", environment_id) from None
            raise Conflict(f"The command could not start: {exc}.", code="exec-refused") from None
        return ExecResult(
            exit_code=outcome.exit_code,
            stdout=out.text("stdout"),
            stderr=out.text("stderr"),
            truncated=bool(out.cut),
            timed_out=outcome.timed_out,
            duration_ms=outcome.duration_ms,
            reason=self._reason(outcome, timeout, why, environment_id),
        )

    def check_exec(
        self, tenant_id: str, environment_id: str, command: Sequence[str], timeout_s: int | None, workdir: str | None
    ) -> Environment:
        """What an exec refuses before it starts (404, 409, 422)."""
        found = self._ready(tenant_id, environment_id)
        check_command(command)
        self.environments.exec_timeout(timeout_s)
        if workdir is not None:
            check_path(workdir, "workdir")
        return found

    def _reason(self, outcome: ExecOutcome, timeout: int, why: list[str], environment_id: str) -> str | None:
        if outcome.timed_out:
            return f"killed after its timeout of {timeout}s"
        if outcome.cancelled:
            return why[0] if why else "cancelled; it was killed"
        if outcome.gone:
            if self.environments.load(environment_id) is None:
                return "the environment was deleted (or its lease ran out) while the command ran"
            return "the environment's container stopped while the command ran"
        return None

    # -- files ------------------------------------------------------------------------------
    def push(self, tenant_id: str, environment_id: str, path: str, archive: Path) -> int:
        """Unpack an uploaded tar.gz (checked as deployment uploads are) at ``path``; bytes unpacked."""
        found = self._ready(tenant_id, environment_id)
        where = check_path(path)
        limits = ExtractLimits(max_bytes=self.config.upload_max_bytes)
        scratch = Path(tempfile.mkdtemp(prefix="moorage-env-push-", dir=archive.parent))
        try:
            size = extract_tar_gz(archive, scratch / "tree", limits)  # ArchiveRejected: the caller answers 422
            tar = _repack(scratch / "tree")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        assert found.container_id is not None
        try:
            self.runtime.put_files(found.container_id, where, tar)
        except ExecRefused as exc:
            raise Conflict(f"The files could not be written: {exc}.", code="files-refused") from None
        return size

    def pull(self, tenant_id: str, environment_id: str, path: str) -> bytes:
        found = self._ready(tenant_id, environment_id)
        where = check_path(path)
        assert found.container_id is not None
        try:
            return self.runtime.get_files(found.container_id, where, self.config.download_max_bytes)
        except FileNotFoundError:
            raise NotFound(f"No file or directory '{where}' in environment {environment_id}.", code="path-not-found") from None
        except FilesTooLarge:
            raise Invalid(
                f"'{where}' is more than {self.config.download_max_bytes} bytes as a tar.gz "
                "(MOORAGE_ENVIRONMENT_DOWNLOAD_MAX_BYTES): pull a smaller directory or single files.",
                code="download-too-large",
            ) from None
        except ExecRefused as exc:
            raise Conflict(f"The files could not be read: {exc}.", code="files-refused") from None

    # -- the reconciler's sweep ----------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Expired environments (container, then row, then an audit event), environments
        whose create never finished, and environment containers with no row."""
        removed: list[str] = []
        for env in self.environments.expired():
            self._remove_container(env)
            if self.environments.remove(None, env.id) is not None:
                removed.append(f"{env.id} (lease ended)")
                self._audit(env, "environment.expired")
        for env in self.environments.stuck_starting():
            self._remove_named(env.id)
            if self.environments.remove(None, env.id) is not None:
                removed.append(f"{env.id} (its create never finished)")
        # Containers first, then the rows: a row is committed before its container is made.
        containers = self.runtime.owned_environments()
        by_id = {eid: c for c in containers if (eid := environment_id_of(c.app))}
        known = self.environments.known(list(by_id))
        for environment_id, container in by_id.items():
            if environment_id not in known and self.runtime.remove(container.id):
                removed.append(f"{container.name} (no environment)")
        return removed

    # -- inside -------------------------------------------------------------------------------
    def _ready(self, tenant_id: str, environment_id: str) -> Environment:
        found = self.environments.get(tenant_id, environment_id)
        if found.lease_expires_at <= self.environments.clock():
            raise NotFound.of("environment", environment_id)  # its lease is over: the reconciler removes it
        if found.status != READY or found.container_id is None:
            raise Conflict(f"Environment {environment_id} is still starting; retry in a moment.", code="environment-starting")
        return found

    def _app_env(self, tenant_id: str, source: EnvironmentSource) -> dict[str, str]:
        if not source.with_app_env or source.app_id is None:
            return {}
        try:
            values = self.env_vars.resolve(tenant_id, source.app_id) if self.env_vars else {}
            linked = self.links.resolve(tenant_id, source.app_id) if self.links else {}
        except (SecretUnreadable, CredentialsUnreadable) as exc:
            raise Conflict(exc.detail, code="secret-unreadable") from None
        return values | linked  # a link wins over a same-named var, as at a deploy

    def _remove_container(self, env: Environment) -> None:
        try:
            if env.container_id is None or not self.runtime.remove(env.container_id):
                self._remove_named(env.id)
        except Exception as exc:  # noqa: BLE001 (Docker down: the reconciler's sweep removes it later)
            log.warning("environment_container_not_removed", environment_id=env.id, error=f"{type(exc).__name__}: {exc}")

    def _remove_named(self, environment_id: str) -> None:
        name = environment_container_name(environment_id)
        with contextlib.suppress(Exception):
            for container in self.runtime.owned_environments():
                if container.name == name:
                    self.runtime.remove(container.id)

    def _audit(self, env: Environment, action: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(
                tenant_id=env.tenant_id,
                api_key_id=None,
                action=action,
                target=f"/v1/environments/{env.id}",
                request_id="reconciler",
                outcome=200,
            )
        except Exception as exc:  # noqa: BLE001 (the tenant may be gone; the removal stands)
            log.warning("environment_audit_failed", environment_id=env.id, error=f"{type(exc).__name__}: {exc}")


def _repack(tree: Path) -> bytes:
    """The checked tree as a plain tar of its contents (relative names, no owners)."""
    buffer = io.BytesIO()

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode &= 0o777
        return info

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name, recursive=True, filter=clean)
    return buffer.getvalue()
