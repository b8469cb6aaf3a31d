"""Environments on the Docker engine (``DockerAppRuntime.exec_in`` and its files): a command
exec'd into the idling container, its multiplexed output read on a thread of its own while
the caller's deadline and cancellation are watched; killed past its deadline or once
cancelled, with every process it started.

Docker cannot kill an exec, and under gVisor the exec's host pid means nothing: the command
runs under a small ``sh`` wrapper that writes its pid to a file in the container, and a kill
is a second exec that walks ``/proc`` for that pid's descendants and SIGKILLs them all (three
rounds, for processes forked meanwhile). So an image needs ``/bin/sh`` to exec into; files
move through ``tar`` in the container, not through the engine's archive API (whose writes a
gVisor sandbox with exclusive file access may never see).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import docker.errors
import structlog
from docker.utils.socket import frames_iter

from control.jobs.runtime_port import ExecOutcome, ExecRefused, FilesTooLarge
from runtime.containers import Containers

log = structlog.get_logger("moorage.environments")
POLL_S = 0.1
CANCEL_CHECK_S = 0.5
DRAIN_S = 5.0  # after a kill, for the stream to end (a process that escaped the kill may hold it open)
STREAMS = {1: "stdout", 2: "stderr"}

# {pidfile}: ours (hex), so safe inside the script; "$@": the command. The shell stays the
# command's parent so the pid file goes when it ends; the command inherits stdin, stdout and
# stderr. $0 is "sh", so the shell's own errors ("sh: 1: python: not found") read as usual.
WRAPPER = 'echo $$ > {pidfile}; "$@"; rc=$?; rm -f {pidfile}; exit $rc'
KILL_TREE = r"""
root=$(cat "$0" 2>/dev/null) || exit 0
for round in 1 2 3; do
  all=""
  for d in /proc/[0-9]*; do
    { read -r s < "$d/stat"; } 2>/dev/null || continue
    r=${s##*) }; set -- $r; all="$all ${d#/proc/}:$2"
  done
  want=" $root "; more=1
  while [ "$more" = 1 ]; do
    more=0
    for e in $all; do
      c=${e%%:*}; p=${e#*:}
      case "$want" in *" $c "*) ;; *) case "$want" in *" $p "*) want="$want$c "; more=1;; esac;; esac
    done
  done
  kill -KILL $want 2>/dev/null
done
rm -f "$0"
exit 0
"""


def exec_in_container(
    containers: Containers,
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
    started = time.monotonic()
    pidfile = f"/tmp/.moorage-exec-{secrets.token_hex(8)}"
    argv = ["/bin/sh", "-c", WRAPPER.format(pidfile=pidfile), "sh", *command]
    try:
        exec_id, sock = containers.exec_open(container_id, argv, stdin=stdin is not None, workdir=workdir, env=dict(env))
    except docker.errors.NotFound:
        raise ExecRefused("the environment's container is gone") from None
    except docker.errors.APIError as exc:
        if exc.status_code in (400, 404, 409, 500):
            raise ExecRefused(f"the command would not start: {exc.explanation or exc}") from None
        raise
    raw: socket.socket = sock._sock
    raw.settimeout(None)  # a silent command is not an error: the deadline below bounds it
    pump = threading.Thread(target=_pump, args=(sock, on_output), name=f"moorage-exec-{exec_id[:12]}", daemon=True)
    pump.start()
    if stdin is not None:
        _feed(raw, stdin)
    killed: str | None = None
    gone = False
    deadline, next_check = started + timeout, started + CANCEL_CHECK_S
    while pump.is_alive():
        now = time.monotonic()
        if killed is None:
            if now >= deadline:
                killed = "timeout"
            elif now >= next_check:
                next_check = now + CANCEL_CHECK_S
                if not _running(containers, container_id):  # a dead sandbox may keep the stream open
                    gone = True
                    break
                killed = "cancelled" if cancelled() else None
            if killed is not None:
                _kill(containers, container_id, pidfile)
                pump.join(DRAIN_S)
                break
        pump.join(POLL_S)
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)
    sock.close()
    duration_ms = round((time.monotonic() - started) * 1000)
    if gone:
        return ExecOutcome(None, duration_ms, gone=True)
    if killed == "timeout":
        return ExecOutcome(None, duration_ms, timed_out=True)
    if killed == "cancelled":
        return ExecOutcome(None, duration_ms, cancelled=True)
    return _ended(containers, exec_id, duration_ms)


def _running(containers: Containers, container_id: str) -> bool:
    try:
        return containers.inspect(container_id).status == "running"
    except docker.errors.NotFound:
        return False


def _ended(containers: Containers, exec_id: str, duration_ms: int) -> ExecOutcome:
    for _ in range(20):  # the stream can end a moment before the engine records the exit
        try:
            info = containers.exec_inspect(exec_id)
        except docker.errors.NotFound:
            return ExecOutcome(None, duration_ms, gone=True)
        if not info.get("Running"):
            code = info.get("ExitCode")
            # The container went away under it: the engine reports the exec ended with no code (or -1).
            return (
                ExecOutcome(code, duration_ms)
                if isinstance(code, int) and code >= 0
                else ExecOutcome(None, duration_ms, gone=True)
            )
        time.sleep(POLL_S)
    return ExecOutcome(None, duration_ms, gone=True)


def _pump(sock: Any, on_output: Callable[[str, bytes], None]) -> None:
    try:
        for stream, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
            if data:
                on_output(STREAMS.get(stream, "stdout"), data)
    except Exception as exc:  # noqa: BLE001 (cut off: the socket was closed, the container removed)
        log.info("exec_stream_ended", error=f"{type(exc).__name__}: {exc}")


def _feed(raw: socket.socket, data: bytes) -> None:
    """Write stdin, then close our side: the command reads to its end."""
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    except OSError as exc:  # the command exited (or was killed) before reading all of it
        log.info("exec_stdin_cut", error=f"{type(exc).__name__}: {exc}")


def _kill(containers: Containers, container_id: str, pidfile: str) -> None:
    try:
        containers.exec(container_id, ["/bin/sh", "-c", KILL_TREE, pidfile])
    except Exception as exc:  # noqa: BLE001 (the container is gone: so is the command)
        log.info("exec_kill_failed", error=f"{type(exc).__name__}: {exc}")


# -- files --------------------------------------------------------------------------------
def _run(
    containers: Containers, container_id: str, command: list[str], *, stdin: bytes | None, limit: int
) -> tuple[int | None, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    over = threading.Event()

    def collect(stream: str, data: bytes) -> None:
        target = out if stream == "stdout" else err
        if target.tell() + len(data) > limit:
            over.set()
            return
        target.write(data)

    outcome = exec_in_container(
        containers,
        container_id,
        command,
        stdin=stdin,
        workdir="/",
        env={},
        timeout=600.0,
        on_output=collect,
        cancelled=over.is_set,
    )
    if over.is_set():
        raise FilesTooLarge(f"more than {limit} bytes")
    if outcome.gone:
        raise ExecRefused("the environment's container went away")
    return outcome.exit_code, out.getvalue(), err.getvalue()


def put_files(containers: Containers, container_id: str, path: str, tar: bytes) -> None:
    script = 'mkdir -p -- "$0" && tar -x -f - -C "$0" --no-same-owner'
    code, _, err = _run(containers, container_id, ["/bin/sh", "-c", script, path], stdin=tar, limit=64 * 1024)
    if code != 0:
        raise ExecRefused(f"unpacking into {path} failed: {err.decode('utf-8', 'replace').strip()[-500:]}")


def get_files(containers: Containers, container_id: str, path: str, max_bytes: int) -> bytes:
    script = 'test -e "$0" || exit 44; cd -- "$(dirname -- "$0")" && tar -c -f - -- "$(basename -- "$0")"'
    code, tar, err = _run(containers, container_id, ["/bin/sh", "-c", script, path], stdin=None, limit=max_bytes)
    if code == 44:
        raise FileNotFoundError(path)
    if code != 0:
        raise ExecRefused(f"reading {path} failed: {err.decode('utf-8', 'replace').strip()[-500:]}")
    packed = gzip.compress(tar, compresslevel=6)
    if len(packed) > max_bytes:
        raise FilesTooLarge(f"more than {max_bytes} bytes")
    return packed
