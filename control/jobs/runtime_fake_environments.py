"""The environment part of the app runtime port's fake (``InMemoryAppRuntime``): idling
containers with in-memory files, and execs whose output and exit a test scripts.

``on_exec`` decides what a command does: it gets a ``FakeExec`` (the command, stdin, env,
workdir and the environment's files) and returns an ``ExecScript``. The default echoes:
its stdout is the arguments after the program, space-separated, then stdin. An exec runs
for the script's ``duration_s`` (``math.inf``: until killed), watching its timeout, its
``cancelled()`` and its container, like the Docker adapter.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import posixpath
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from control.jobs.environment_names import environment_container_name, environment_label
from control.jobs.runtime_port import AppContainer, EnvironmentSpec, ExecOutcome, ExecRefused, FilesTooLarge, PooledEnvironment


@dataclass(frozen=True)
class ExecScript:
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True)
class FakeExec:
    command: tuple[str, ...]
    stdin: bytes | None
    env: Mapping[str, str]
    workdir: str | None
    files: dict[str, bytes]  # the environment's files (absolute paths), to read or change


@dataclass
class FakeEnvironment:
    id: str
    name: str
    spec: EnvironmentSpec
    ip: str
    status: str = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    execs: list[FakeExec] = field(default_factory=list)

    def view(self) -> AppContainer:
        return AppContainer(
            id=self.id,
            name=self.name,
            tenant=self.spec.tenant,
            app=environment_label(self.spec.environment_id),
            release="",
            image=self.spec.image,
            status=self.status,
            ip=self.ip if self.status == "running" else None,
        )


def echo(call: FakeExec) -> ExecScript:
    return ExecScript(stdout=" ".join(call.command[1:]).encode() + (call.stdin or b""))


class FakeEnvironments:
    """Mixed into ``InMemoryAppRuntime``."""

    def __init__(self) -> None:
        self.environments: dict[str, FakeEnvironment] = {}  # by container id
        self.on_exec: Callable[[FakeExec], ExecScript] = echo
        self.environment_start_failure: str | None = None  # the next starts raise ExecRefused with it
        self.max_parallel_execs = 0
        self._exec_lock = threading.Lock()
        self._parallel_execs = 0
        self._env_serial = itertools.count(1)
        # The warm pool's containers, unclaimed, by name; a claimed one moves to environments.
        self.pooled: dict[str, tuple[PooledEnvironment, EnvironmentSpec]] = {}
        self.pool_starts = 0
        self.pool_start_delay_s = 0.0  # how long starting a pooled container takes
        self.max_pooled = 0  # the most pooled containers there were at once
        self._pool_lock = threading.Lock()

    def environment_of(self, environment_id: str) -> FakeEnvironment | None:
        name = environment_container_name(environment_id)
        return next((e for e in self.environments.values() if e.name == name), None)

    def start_environment(self, spec: EnvironmentSpec) -> AppContainer:
        if self.environment_start_failure is not None:
            raise ExecRefused(self.environment_start_failure)
        name = environment_container_name(spec.environment_id)
        for same in [cid for cid, e in self.environments.items() if e.name == name]:
            del self.environments[same]
        serial = next(self._env_serial)
        container_id = hashlib.sha256(f"fake-env-{serial}-{spec.environment_id}".encode()).hexdigest()
        env = FakeEnvironment(container_id, name, spec, ip=f"10.90.{serial // 250}.{serial % 250 + 2}")
        self.environments[container_id] = env
        return env.view()

    def exec_in(
        self,
        container_id: str,
        command: Sequence[str],
        *,
        stdin: bytes | None,
        workdir: str | None,
        env: Mapping[str, str],
        timeout: float,
        on_output: Callable[[str, bytes], None],
        cancelled: Callable[[], bool],
    ) -> ExecOutcome:
        found = self.environments.get(container_id)
        if found is None or found.status != "running":
            raise ExecRefused("the environment's container is gone")
        call = FakeExec(tuple(command), stdin, dict(env), workdir, found.files)
        found.execs.append(call)
        script = self.on_exec(call)
        started = time.monotonic()
        with self._exec_lock:
            self._parallel_execs += 1
            self.max_parallel_execs = max(self.max_parallel_execs, self._parallel_execs)
        try:
            if script.stdout:
                on_output("stdout", script.stdout)
            if script.stderr:
                on_output("stderr", script.stderr)
            while True:
                elapsed = time.monotonic() - started
                ms = round(elapsed * 1000)
                if container_id not in self.environments:
                    return ExecOutcome(None, ms, gone=True)
                if elapsed >= script.duration_s:
                    return ExecOutcome(script.exit_code, ms)
                if elapsed >= timeout:
                    return ExecOutcome(None, ms, timed_out=True)
                if cancelled():
                    return ExecOutcome(None, ms, cancelled=True)
                time.sleep(0.01)
        finally:
            with self._exec_lock:
                self._parallel_execs -= 1

    def put_files(self, container_id: str, path: str, tar: bytes) -> None:
        found = self.environments.get(container_id)
        if found is None:
            raise ExecRefused("the environment's container is gone")
        if path in found.files:
            raise ExecRefused(f"unpacking into {path} failed: it is a file")
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            for member in archive:
                if member.isfile():
                    data = archive.extractfile(member)
                    found.files[posixpath.normpath(posixpath.join(path, member.name))] = data.read() if data else b""

    def get_files(self, container_id: str, path: str, max_bytes: int) -> bytes:
        found = self.environments.get(container_id)
        if found is None:
            raise ExecRefused("the environment's container is gone")
        path = posixpath.normpath(path)
        inside = {p: d for p, d in found.files.items() if p == path or p.startswith(path.rstrip("/") + "/")}
        if not inside:
            raise FileNotFoundError(path)
        base = posixpath.dirname(path)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for file_path, data in sorted(inside.items()):
                info = tarfile.TarInfo(posixpath.relpath(file_path, base))
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        packed = gzip.compress(buffer.getvalue())
        if len(packed) > max_bytes:
            raise FilesTooLarge(f"more than {max_bytes} bytes")
        return packed

    def owned_environments(self) -> list[AppContainer]:
        return [e.view() for e in list(self.environments.values())]

    # -- the warm pool --------------------------------------------------------------------
    def start_pooled_environment(self, image: str, millicpus: int, memory_mb: int) -> PooledEnvironment:
        if self.environment_start_failure is not None:
            raise ExecRefused(self.environment_start_failure)
        time.sleep(self.pool_start_delay_s)
        serial = next(self._env_serial)
        slot = f"{serial:012x}"
        container_id = hashlib.sha256(f"fake-pool-{slot}".encode()).hexdigest()
        pooled = PooledEnvironment(container_id, f"moorage-pool-{slot}", image, millicpus, memory_mb, running=True)
        spec = EnvironmentSpec(f"pool-{slot}", "moorage-pool", image, millicpus, memory_mb)
        with self._pool_lock:
            self.pooled[pooled.name] = (pooled, spec)
            self.pool_starts += 1
            self.max_pooled = max(self.max_pooled, len(self.pooled))
        return pooled

    def pooled_environments(self) -> list[PooledEnvironment]:
        with self._pool_lock:
            return [pooled for pooled, _ in self.pooled.values()]

    def claim_pooled_environment(self, pooled: PooledEnvironment, spec: EnvironmentSpec) -> AppContainer | None:
        if spec.env:
            raise ValueError("a pooled container cannot take env vars")
        with self._pool_lock:
            if self.pooled.pop(pooled.name, None) is None:
                return None
        name = environment_container_name(spec.environment_id)
        for same in [cid for cid, e in self.environments.items() if e.name == name]:
            del self.environments[same]
        serial = next(self._env_serial)
        claimed = FakeEnvironment(pooled.container_id, name, spec, ip=f"10.91.{serial // 250}.{serial % 250 + 2}")
        self.environments[pooled.container_id] = claimed
        return claimed.view()

    def remove_pooled(self, container_id: str) -> bool:
        with self._pool_lock:
            for name, (pooled, _) in list(self.pooled.items()):
                if pooled.container_id == container_id:
                    del self.pooled[name]
                    return True
        return False
