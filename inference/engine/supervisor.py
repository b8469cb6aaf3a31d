"""Keeps one engine process serving: launch, wait until healthy, relaunch on crash with
exponential backoff (up to a cap, then FAILED), drain on shutdown, report NodeStatus.

Threads, not asyncio: the work is waiting on a child process and a few HTTP probes,
and `node run` has nothing else to do."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from inference.engine.commands import EngineCommand
from inference.engine.gpu import GpuMemory, gpu_memory
from inference.engine.inflight import requests_in_flight
from inference.engine.policy import SupervisorPolicy
from inference.engine.process import EngineProcess
from inference.engine.status import EngineState, HeartbeatSink, NodeStatus


class EngineSupervisor:
    def __init__(
        self,
        command: EngineCommand,
        policy: SupervisorPolicy | None = None,
        *,
        heartbeat: HeartbeatSink | None = None,
        model_info: dict[str, Any] | None = None,
        gpu_probe: Callable[[], list[GpuMemory] | None] = gpu_memory,
        redact: Iterable[str] = (),
    ) -> None:
        self.command = command
        self.policy = policy or SupervisorPolicy()
        self._heartbeat = heartbeat
        self._model_info = model_info
        self._gpu_probe = gpu_probe
        self._redact = tuple(redact)
        self._log = structlog.get_logger("inference.supervisor").bind(engine=command.engine)
        self._lock = threading.Lock()
        self._stop = threading.Event()  # drain requested
        self._changed = threading.Condition(self._lock)
        self._state = EngineState.STOPPED
        self._process: EngineProcess | None = None
        self._restarts = 0
        self._crashes = 0
        self._last_exit_code: int | None = None
        self._last_error: str | None = None
        self._healthy_since: float | None = None
        self._exit_reason: str | None = None  # why the current engine is being let go
        self._heartbeat_lock = threading.Lock()  # beats go out in the order states were seen
        self._threads: list[threading.Thread] = []
        self._drained = False

    # ---- public ----

    @property
    def state(self) -> EngineState:
        return self._state

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("supervisor already started")
        self._threads = [
            threading.Thread(target=self._run, name="engine-supervisor", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="node-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def wait_for(self, *states: EngineState, timeout: float) -> bool:
        """Block until the state is one of `states` (True) or `timeout` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state in states, timeout)

    def wait_healthy(self, timeout: float) -> bool:
        self.wait_for(EngineState.HEALTHY, EngineState.FAILED, EngineState.STOPPED, timeout=timeout)
        return self._state is EngineState.HEALTHY

    def status(self) -> NodeStatus:
        process = self._process
        healthy_since = self._healthy_since
        in_flight = None
        if self._state in (EngineState.HEALTHY, EngineState.DRAINING):
            in_flight = requests_in_flight(self.command.base_url, self.command.metrics_path)
        return NodeStatus(
            engine=self.command.engine,
            model=self.command.served_model_name,
            base_url=self.command.base_url,
            state=self._state,
            pid=process.pid if process and process.poll() is None else None,
            restarts=self._restarts,
            consecutive_crashes=self._crashes,
            last_exit_code=self._last_exit_code,
            last_error=self._last_error,
            requests_in_flight=in_flight,
            gpus=self._gpu_probe(),
            healthy_since=_iso(healthy_since) if healthy_since else None,
            model_info=self._model_info,
        )

    def drain(self) -> NodeStatus:
        """Stop accepting (state DRAINING, heartbeat says so), let in-flight requests finish
        within the grace period, then stop the engine (SIGTERM, SIGKILL after a timeout)."""
        if not self._threads or self._drained:
            return self.status()
        self._drained = True
        failed = self._state is EngineState.FAILED
        self._log.info("drain_start", grace_s=self.policy.drain_grace_s)
        started = time.monotonic()
        self._stop.set()
        if not failed:
            self._set_state(EngineState.DRAINING)
        self._wait_in_flight(deadline=started + self.policy.drain_grace_s)
        # When the engine cannot count in-flight requests, the rest of the grace period goes
        # to its own graceful shutdown (uvicorn finishes open requests on SIGTERM).
        left = max(0.0, started + self.policy.drain_grace_s - time.monotonic())
        # The loop leaves a running engine alone once stopping; join it first so it cannot
        # launch a new engine behind our back.
        self._threads[0].join(timeout=self.policy.terminate_timeout_s)
        if self._process is not None:
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean exit here.
            self._last_exit_code = self._process.stop(timeout=max(self.policy.terminate_timeout_s, left))
        self._threads[1].join(timeout=5)
        if not failed:
            self._set_state(EngineState.STOPPED)
        self._log.info("drain_done", seconds=round(time.monotonic() - started, 2), exit_code=self._last_exit_code)
        return self.status()

    def run_until_signal(self) -> NodeStatus:
        """`node run`: start, serve until SIGTERM/SIGINT (or FAILED), then drain."""
        signalled = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: signalled.set())
        self.start()
        while not signalled.wait(1.0):
            if self._state is EngineState.FAILED:
                break
        return self.drain()

    # ---- the supervision loop ----

    def _run(self) -> None:
        while not self._stop.is_set():
            self._set_state(EngineState.STARTING if self._restarts == 0 else EngineState.RESTARTING)
            self._process = EngineProcess(self.command, redact=self._redact)
            self._log.info("engine_launched", pid=self._process.pid, argv=self._process.command.argv)
            if self._await_healthy(self._process):
                self._serve(self._process)
            if self._stop.is_set():
                return
            if not self._on_crash(self._process):
                return

    def _await_healthy(self, process: EngineProcess) -> bool:
        deadline = time.monotonic() + self.policy.health_timeout_s
        while time.monotonic() < deadline:
            if self._stop.is_set() or process.poll() is not None:
                return False
            if self._healthy():
                self._healthy_since = time.time()
                self._set_state(EngineState.HEALTHY)
                self._log.info("engine_healthy", pid=process.pid, url=self.command.base_url)
                return True
            self._stop.wait(self.policy.health_interval_s)
        self._exit_reason = f"not healthy within {self.policy.health_timeout_s}s"
        process.stop(self.policy.terminate_timeout_s)
        return False

    def _serve(self, process: EngineProcess) -> None:
        """While healthy: watch for exit, and for a hung engine (health failing in a row)."""
        failures = 0
        while not self._stop.wait(self.policy.liveness_interval_s):
            if process.poll() is not None:
                return
            failures = 0 if self._healthy() else failures + 1
            if failures >= self.policy.liveness_failures:
                self._exit_reason = f"health check failed {failures} times in a row"
                process.stop(self.policy.terminate_timeout_s)
                return

    def _on_crash(self, process: EngineProcess) -> bool:
        """Record the crash; wait out the backoff. False: gave up or drain began."""
        code = process.wait(self.policy.terminate_timeout_s)
        if code is None:  # still running (health deadline path already stopped it otherwise)
            code = process.stop(self.policy.terminate_timeout_s)
        self._last_exit_code = code
        stable = self._healthy_since is not None and time.time() - self._healthy_since >= self.policy.stable_after_s
        self._crashes = 1 if stable else self._crashes + 1
        self._healthy_since = None
        tail = list(process.tail)[-5:]
        self._last_error = self._exit_reason or f"engine exited with code {code}"
        self._exit_reason = None
        self._log.warning("engine_crashed", exit_code=code, crashes=self._crashes, last_lines=tail)
        if self._crashes > self.policy.max_consecutive_crashes:
            self._log.error("engine_gave_up", crashes=self._crashes, last_error=self._last_error)
            self._set_state(EngineState.FAILED)
            return False
        delay = self.policy.backoff(self._crashes)
        self._restarts += 1
        self._set_state(EngineState.RESTARTING)
        self._log.info("engine_restart_backoff", delay_s=delay, restart=self._restarts)
        return not self._stop.wait(delay)

    # ---- helpers ----

    def _healthy(self) -> bool:
        try:
            response = httpx.get(self.command.base_url + self.command.health_path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _wait_in_flight(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            count = requests_in_flight(self.command.base_url, self.command.metrics_path)
            if not count:  # zero, or unknown (see drain)
                return
            self._log.info("drain_waiting", requests_in_flight=count)
            time.sleep(0.5)

    def _set_state(self, state: EngineState) -> None:
        with self._changed:
            if self._state is state:
                return
            if self._stop.is_set() and state not in (EngineState.DRAINING, EngineState.STOPPED, EngineState.FAILED):
                return  # a late "healthy" from the loop must not undo a drain
            self._state = state
            self._changed.notify_all()
        self._log.info("engine_state", state=state.value)
        self._send_heartbeat()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.policy.heartbeat_interval_s):
            self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        if self._heartbeat is None:
            return
        try:
            with self._heartbeat_lock:
                self._heartbeat.send_heartbeat(self.status())
        except Exception as exc:  # noqa: BLE001 (a lost heartbeat must never take the engine down)
            self._log.warning("heartbeat_failed", error=str(exc))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
