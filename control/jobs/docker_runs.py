"""One-off runs on the Docker engine (``DockerAppRuntime.run_command``): the container is
created and started through ``runtime.containers`` (so through the sandbox policy), its
output followed on a thread of its own while its state is polled; killed past its deadline
or once cancelled; removed however it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import docker.errors
import structlog

from control.jobs.runtime_port import RunOutcome, RunRefused
from runtime.containers import Containers
from runtime.failures import is_dependency_failure
from runtime.sandbox import ContainerSpec, SandboxPolicy

log = structlog.get_logger("moorage.runs")
RUN_POLL_S = 0.2  # how often a run's container is looked at (exited? past its time? cancelled?)
CANCEL_CHECK_S = 0.5
KILL_WAIT_S = 15.0  # a killed sandbox that has not stopped by then is removed by force
OUTPUT_DRAIN_S = 5.0  # after the exit, for the last lines of its log to arrive
MAX_LINE_BYTES = 64 * 1024  # output with no newline for this long is passed on in pieces


def run_in_container(
    containers: Containers,
    spec: ContainerSpec,
    policy: SandboxPolicy,
    *,
    timeout: float,
    on_output: Callable[[str], None],
    cancelled: Callable[[], bool],
) -> RunOutcome:
    assert spec.name is not None
    containers.remove(spec.name, force=True)  # a retried run's leftover
    deadline = time.monotonic() + timeout
    try:
        info = containers.run(spec, policy)
    except docker.errors.APIError as exc:
        # The engine answered: the command cannot start (no such program in the image, say).
        if exc.status_code in (400, 404, 500) and not is_dependency_failure(exc, idempotent=False):
            raise RunRefused(f"the container would not start: {exc.explanation or exc}") from None
        raise
    try:
        return _watch(containers, info.id, deadline, on_output, cancelled)
    finally:
        try:
            containers.remove(info.id, force=True)
        except Exception as exc:  # noqa: BLE001 (the outcome, or the error that ended the watch, matters more; the reconciler removes it)
            log.warning("run_container_not_removed", container=info.id[:12], error=f"{type(exc).__name__}: {exc}")


def _watch(
    containers: Containers, container_id: str, deadline: float, on_output: Callable[[str], None], cancelled: Callable[[], bool]
) -> RunOutcome:
    pump = threading.Thread(
        target=_pump, args=(containers, container_id, on_output), name=f"moorage-run-output-{container_id[:12]}", daemon=True
    )
    pump.start()
    killed: str | None = None
    killed_at = next_cancel_check = 0.0
    while True:
        info = containers.inspect(container_id)
        now = time.monotonic()
        if info.status in ("exited", "dead") or (killed and now - killed_at > KILL_WAIT_S):
            break
        if killed is None:
            if now >= deadline:
                killed = "timeout"
            elif now >= next_cancel_check:
                next_cancel_check = now + CANCEL_CHECK_S
                killed = "cancelled" if cancelled() else None
            if killed is not None:
                killed_at = now
                containers.kill(container_id)
        time.sleep(RUN_POLL_S)
    pump.join(OUTPUT_DRAIN_S)
    if killed == "timeout":
        return RunOutcome(None, timed_out=True)
    if killed == "cancelled":
        return RunOutcome(None, cancelled=True)
    return RunOutcome(info.exit_code)


def _pump(containers: Containers, container_id: str, on_output: Callable[[str], None]) -> None:
    """The container's output, line by line, until its log ends (it exited, or was removed)."""
    try:
        for line in output_lines(containers._log_stream(container_id, "all")):
            on_output(line)
    except Exception as exc:  # noqa: BLE001 (cut off: the container was removed under the stream)
        log.info("run_output_stream_ended", container=container_id[:12], error=f"{type(exc).__name__}: {exc}")


def output_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Lines from a byte stream; a line longer than ``MAX_LINE_BYTES`` comes in pieces, so
    output without newlines cannot pile up in memory."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace")
        while len(buf) >= MAX_LINE_BYTES:
            piece, buf = buf[:MAX_LINE_BYTES], buf[MAX_LINE_BYTES:]
            yield piece.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")
