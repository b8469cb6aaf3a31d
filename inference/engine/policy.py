"""How patiently the supervisor treats its engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SupervisorPolicy:
    health_timeout_s: float = 600.0  # a large model can take minutes to load
    health_interval_s: float = 0.5
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    max_consecutive_crashes: int = 5  # then give up: state FAILED
    stable_after_s: float = 300.0  # healthy this long: the crash streak is forgiven
    liveness_failures: int = 5  # failed health checks in a row while healthy = hung engine
    liveness_interval_s: float = 5.0
    drain_grace_s: float = 30.0  # in-flight requests get this long to finish
    terminate_timeout_s: float = 15.0  # SIGTERM → SIGKILL
    heartbeat_interval_s: float = 10.0

    def backoff(self, crash_number: int) -> float:
        """Delay before relaunch after the n-th crash in a row (1-based)."""
        return min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor ** (crash_number - 1))
