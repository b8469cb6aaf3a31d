"""The engine supervisor, driven by a real child process: stand_in_engine (see its
docstring: a tiny HTTP process playing an engine, not an inference engine)."""

from __future__ import annotations

import time

import httpx
import pytest

from inference.engine.policy import SupervisorPolicy
from inference.engine.status import EngineState, NodeStatus
from inference.engine.supervisor import EngineSupervisor
from tests.inference.helpers import stand_in_command

FAST = SupervisorPolicy(
    health_timeout_s=10,
    health_interval_s=0.05,
    backoff_initial_s=0.2,
    backoff_factor=2,
    backoff_max_s=0.5,
    max_consecutive_crashes=3,
    liveness_interval_s=0.1,
    drain_grace_s=3,
    terminate_timeout_s=2,
    heartbeat_interval_s=0.2,
)


class RecordingSink:
    def __init__(self) -> None:
        self.beats: list[NodeStatus] = []

    def send_heartbeat(self, status: NodeStatus) -> None:
        self.beats.append(status)


def test_healthy_engine_reports_status_and_drains_cleanly() -> None:
    sink = RecordingSink()
    supervisor = EngineSupervisor(stand_in_command(metrics=True), FAST, heartbeat=sink, gpu_probe=lambda: None)
    supervisor.start()
    try:
        assert supervisor.wait_healthy(timeout=15)
        status = supervisor.status()
        assert status.state is EngineState.HEALTHY and status.accepting
        assert status.pid is not None and status.requests_in_flight == 0 and status.gpus is None
        assert httpx.get(status.base_url + "/health").status_code == 200
    finally:
        final = supervisor.drain()
    assert final.state is EngineState.STOPPED and final.pid is None
    states = [beat.state for beat in sink.beats]
    assert states[0] is EngineState.STARTING and EngineState.HEALTHY in states
    assert states[-2:] == [EngineState.DRAINING, EngineState.STOPPED]
    with pytest.raises(httpx.ConnectError):
        httpx.get(status.base_url + "/health")


def test_crashing_engine_is_restarted_with_backoff_then_given_up() -> None:
    sink = RecordingSink()
    supervisor = EngineSupervisor(
        stand_in_command("--exit-after", "0.3", "--exit-code", "7"), FAST, heartbeat=sink, gpu_probe=lambda: None
    )
    started = time.monotonic()
    supervisor.start()
    assert supervisor.wait_for(EngineState.FAILED, timeout=40)
    elapsed = time.monotonic() - started
    status = supervisor.status()
    # 1 launch + 3 relaunches, then the 4th crash in a row exceeds max_consecutive_crashes=3.
    assert status.restarts == 3 and status.consecutive_crashes == 4
    assert status.last_exit_code == 7 and status.last_error == "engine exited with code 7"
    assert elapsed >= 0.2 + 0.4 + 0.5  # the backoffs were waited out (0.8 capped to 0.5)
    assert supervisor.drain().state is EngineState.FAILED  # giving up is not overwritten
    seen = [beat.state for beat in sink.beats]  # read after drain joined the threads
    assert EngineState.HEALTHY in seen and EngineState.RESTARTING in seen and seen[-1] is EngineState.FAILED


def test_engine_that_never_becomes_healthy_counts_as_a_crash() -> None:
    policy = SupervisorPolicy(**{**FAST.__dict__, "health_timeout_s": 0.5, "max_consecutive_crashes": 1})
    supervisor = EngineSupervisor(stand_in_command("--never-healthy"), policy, gpu_probe=lambda: None)
    supervisor.start()
    assert supervisor.wait_for(EngineState.FAILED, timeout=20)
    assert supervisor.status().last_error == "not healthy within 0.5s"
    supervisor.drain()


def test_drain_waits_for_in_flight_then_kills_an_engine_that_ignores_sigterm() -> None:
    policy = SupervisorPolicy(**{**FAST.__dict__, "drain_grace_s": 1.0, "terminate_timeout_s": 0.5})
    command = stand_in_command("--in-flight", "2", "--ignore-sigterm", metrics=True)
    supervisor = EngineSupervisor(command, policy, gpu_probe=lambda: None)
    supervisor.start()
    assert supervisor.wait_healthy(timeout=15)
    assert supervisor.status().requests_in_flight == 2
    started = time.monotonic()
    final = supervisor.drain()
    elapsed = time.monotonic() - started
    # Waited the grace period for the 2 in-flight requests, then SIGTERM (ignored), then SIGKILL.
    assert 1.0 <= elapsed < 5
    assert final.state is EngineState.STOPPED and final.last_exit_code == -9
