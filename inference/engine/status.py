"""What a node reports about itself, and the seam its heartbeat goes through.

`NodeStatus` is the body a later heartbeat to the control plane sends; `HeartbeatSink`
is where it goes. Until node registration exists the node only logs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from inference.engine.gpu import GpuMemory


class EngineState(StrEnum):
    STARTING = "starting"  # engine launched, not yet answering its health check
    HEALTHY = "healthy"  # serving: the gateway may route here
    RESTARTING = "restarting"  # engine died; waiting out the backoff before relaunching
    DRAINING = "draining"  # shutting down: take no new requests, let in-flight finish
    STOPPED = "stopped"  # drained and stopped on request
    FAILED = "failed"  # gave up after too many crashes; needs a person


@dataclass(frozen=True)
class NodeStatus:
    engine: str
    model: str  # the `model` clients send
    base_url: str  # loopback/private: the gateway reaches it, tenants do not
    state: EngineState
    pid: int | None
    restarts: int  # relaunches since the node started
    consecutive_crashes: int
    last_exit_code: int | None
    last_error: str | None
    requests_in_flight: int | None  # None: the engine does not tell
    gpus: list[GpuMemory] | None  # None: no GPU readable
    healthy_since: str | None
    reported_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    model_info: dict[str, Any] | None = None  # experts, top-k, total/active parameters

    @property
    def accepting(self) -> bool:
        return self.state is EngineState.HEALTHY

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["state"] = self.state.value
        body["accepting"] = self.accepting
        return body


class HeartbeatSink(Protocol):
    def send_heartbeat(self, status: NodeStatus) -> None: ...


class LogHeartbeatSink:
    """Stand-in until node registration: the heartbeat goes to the log."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("inference.heartbeat")

    def send_heartbeat(self, status: NodeStatus) -> None:
        self._log.info("node_heartbeat", **status.to_dict())
