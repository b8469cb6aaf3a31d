"""`docker exec` with streamed stdin/stdout, for dumps and restores of any size.

`Containers.exec` buffers output in memory and cannot feed stdin; a backup can be gigabytes.
Creating and starting the exec go through the engine's guard; the byte transfer itself does
not (like `Containers.follow_logs`): a long transfer must not hold a breaker slot.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded

CHUNK = 1 << 16
STDOUT, STDERR = 1, 2
STDERR_KEEP = 8192  # bytes of stderr kept for error messages (the tail)


@dataclass(frozen=True)
class ExecOutcome:
    exit_code: int
    stderr: str  # the tail; callers redact it before it goes anywhere


class ExecIO:
    def __init__(self, engine: DockerEngine, idle_timeout: float = 300.0) -> None:
        self.engine = engine
        self.guard = engine.guard
        self.idle_timeout = idle_timeout

    @property
    def _api(self) -> Any:
        return self.engine.client.api

    @guarded(idempotent=False)
    def _create(self, container_id: str, cmd: list[str], env: Mapping[str, str] | None, user: str, stdin: bool) -> str:
        res = self._api.exec_create(
            container_id, cmd, stdin=stdin, stdout=True, stderr=True, environment=dict(env) if env else None, user=user
        )
        return str(res["Id"])

    @guarded(idempotent=False)
    def _start(self, exec_id: str) -> socket.socket:
        sock = self._api.exec_start(exec_id, socket=True)
        raw: socket.socket = getattr(sock, "_sock", sock)  # the SDK wraps it in SocketIO
        return raw

    @guarded(idempotent=True)
    def _inspect(self, exec_id: str) -> dict[str, Any]:
        return dict(self._api.exec_inspect(exec_id))

    def run(
        self,
        container_id: str,
        cmd: list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str = "",
        stdin: BinaryIO | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> ExecOutcome:
        """Run `cmd`; stream `stdin` in (then half-close) and stdout chunks to `on_stdout`."""
        exec_id = self._create(container_id, cmd, env, user, stdin is not None)
        raw = self._start(exec_id)
        raw.settimeout(self.idle_timeout)
        stderr = bytearray()
        feeder = None
        try:
            if stdin is not None:  # written from a thread so a chatty process cannot deadlock us
                feeder = threading.Thread(target=_feed, args=(raw, stdin), daemon=True)
                feeder.start()
            for stream, payload in _frames(raw):
                if stream == STDOUT and on_stdout is not None:
                    on_stdout(payload)
                elif stream == STDERR:
                    stderr += payload
                    del stderr[:-STDERR_KEEP]
        finally:
            if feeder is not None:
                feeder.join(timeout=self.idle_timeout)
            raw.close()
        return ExecOutcome(self._exit_code(exec_id), stderr.decode("utf-8", "replace"))

    def _exit_code(self, exec_id: str) -> int:
        deadline = time.monotonic() + 30.0  # the stream can end a moment before the process
        while True:
            info = self._inspect(exec_id)
            if not info.get("Running") or time.monotonic() > deadline:
                code = info.get("ExitCode")
                return int(code) if code is not None else -1
            time.sleep(0.1)


def _feed(raw: socket.socket, src: BinaryIO) -> None:
    try:
        while chunk := src.read(CHUNK):
            raw.sendall(chunk)
        raw.shutdown(socket.SHUT_WR)  # dockerd closes the process's stdin on half-close
    except OSError:
        pass  # the process exited early; its exit code and stderr tell why


def _read_exact(raw: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = raw.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _frames(raw: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed stream (no TTY): 8-byte header [stream, 0, 0, 0, size:u32be]."""
    while True:
        header = _read_exact(raw, 8)
        if len(header) < 8:
            return
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        while size:
            chunk = raw.recv(min(size, CHUNK))
            if not chunk:
                return
            size -= len(chunk)
            yield stream, chunk
