"""Container lifecycle: create (always through `runtime.sandbox`), start, stop, remove,
inspect, logs, exec. Every call goes through the engine's guard (breaker + safe retries)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import docker
import docker.errors
from docker.models.containers import Container
from docker.types.daemon import CancellableStream

from runtime import labels as L
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded
from runtime.sandbox import ContainerSpec, SandboxPolicy, create_kwargs


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created | running | exited | ...
    runtime: str
    image: str
    labels: dict[str, str]
    ip_addresses: dict[str, str]  # network name -> IP
    exit_code: int | None
    attrs: dict[str, Any] = field(repr=False, default_factory=dict)  # raw inspect output

    def ip_on(self, network: str) -> str:
        ip = self.ip_addresses.get(network)
        if not ip:
            raise LookupError(f"container {self.name} has no address on {network}")
        return ip


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


def _info(c: Container) -> ContainerInfo:
    a = c.attrs
    nets = (a.get("NetworkSettings") or {}).get("Networks") or {}
    return ContainerInfo(
        id=c.id or "",
        name=(a.get("Name") or "").lstrip("/"),
        status=a["State"]["Status"],
        runtime=a["HostConfig"].get("Runtime", ""),
        image=a.get("Config", {}).get("Image", ""),
        labels=dict(a.get("Config", {}).get("Labels") or {}),
        ip_addresses={n: v.get("IPAddress", "") for n, v in nets.items() if v.get("IPAddress")},
        exit_code=a["State"].get("ExitCode"),
        attrs=a,
    )


LogTail = int | Literal["all"]


class Containers:
    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.guard = engine.guard

    @property
    def _api(self) -> docker.DockerClient:
        return self.engine.client

    @guarded(idempotent=False)
    def create(self, spec: ContainerSpec, policy: SandboxPolicy = SandboxPolicy()) -> ContainerInfo:
        kwargs = create_kwargs(spec, policy, self.engine.settings)
        aliases = [spec.app, *spec.aliases] if spec.app_alias else list(spec.aliases)
        kwargs["networking_config"] = {spec.network: self._api.api.create_endpoint_config(aliases=aliases)}
        return _info(self._api.containers.create(**kwargs))

    @guarded(idempotent=True)  # starting a running container is a no-op
    def start(self, container_id: str) -> ContainerInfo:
        c = self._api.containers.get(container_id)
        c.start()
        c.reload()
        return _info(c)

    def run(self, spec: ContainerSpec, policy: SandboxPolicy = SandboxPolicy()) -> ContainerInfo:
        """create + start; a container that fails to start is removed (nothing half-made)."""
        info = self.create(spec, policy)
        try:
            return self.start(info.id)
        except Exception:
            self.remove(info.id, force=True)
            raise

    @guarded(idempotent=True)
    def stop(self, container_id: str, timeout: int = 10) -> None:
        self._api.containers.get(container_id).stop(timeout=timeout)

    @guarded(idempotent=True)
    def kill(self, container_id: str) -> bool:
        """SIGKILL, no grace period; False when it was not running (any more)."""
        try:
            self._api.containers.get(container_id).kill()
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running: it exited meanwhile
                return False
            raise
        return True

    @guarded(idempotent=True)
    def remove(self, container_id: str, force: bool = False) -> bool:
        """False when the container is gone, or another caller's removal of it is under way."""
        try:
            self._api.containers.get(container_id).remove(force=force, v=True)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc):
                return False
            raise
        return True

    @guarded(idempotent=True)
    def inspect(self, container_id: str) -> ContainerInfo:
        return _info(self._api.containers.get(container_id))

    @guarded(idempotent=True)
    def find(self, **labels: str) -> list[ContainerInfo]:
        """Containers moorage created, by short label name: find(tenant='a', app='web')."""
        # ignore_removed: one removed between the listing and its inspection is just not listed.
        cs = self._api.containers.list(all=True, filters={"label": L.selector(**labels)}, ignore_removed=True)
        return [_info(c) for c in cs]

    @guarded(idempotent=True)
    def stats(self, container_id: str) -> dict[str, Any] | None:
        """One reading of the engine's stats (no wait for a second sample); None when gone."""
        try:
            found: dict[str, Any] = self._api.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.NotFound:
            return None
        return found

    @guarded(idempotent=True)
    def logs(self, container_id: str, tail: LogTail = "all") -> list[str]:
        raw = self._api.containers.get(container_id).logs(tail=tail, timestamps=False)
        return raw.decode("utf-8", "replace").splitlines()

    @guarded(idempotent=True)
    def _log_stream(self, container_id: str, tail: LogTail) -> CancellableStream[bytes]:
        return self._api.containers.get(container_id).logs(stream=True, follow=True, tail=tail)

    def follow_logs(self, container_id: str, tail: LogTail = 0) -> Iterator[str]:
        """Yield log lines as they come (until the container stops). Only opening the stream is
        guarded: a long stream must not hold a half-open breaker slot."""
        buf = b""
        for chunk in self._log_stream(container_id, tail):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.decode("utf-8", "replace")

    @guarded(idempotent=False)
    def exec(self, container_id: str, cmd: list[str], user: str | None = None) -> ExecResult:
        res = self._api.containers.get(container_id).exec_run(cmd, user=user or "", demux=False)
        # Not streamed, so docker-py waited for the exit and read the whole output; the stub
        # types both for the streamed case too (no code yet, an iterator of chunks).
        output = res.output if isinstance(res.output, bytes) else b""
        return ExecResult(exit_code=-1 if res.exit_code is None else res.exit_code, output=output.decode("utf-8", "replace"))

    # -- interactive execs (environments) ---------------------------------------------------
    @guarded(idempotent=False)
    def exec_open(
        self, container_id: str, cmd: list[str], *, stdin: bool, workdir: str | None, env: dict[str, str]
    ) -> tuple[str, Any]:
        """Start ``cmd`` in the container; its exec id and the raw socket of its multiplexed
        stdout/stderr (with stdin to write to, when asked). Only starting it is guarded: a
        long command must not hold a half-open breaker slot."""
        api = self._api.api
        created = api.exec_create(
            container_id,
            cmd,
            stdin=stdin,
            stdout=True,
            stderr=True,
            workdir=workdir,
            environment=[f"{k}={v}" for k, v in env.items()] or None,
        )
        exec_id = str(created["Id"])
        return exec_id, api.exec_start(exec_id, socket=True)

    @guarded(idempotent=True)
    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._api.api.exec_inspect(exec_id)
        return found
