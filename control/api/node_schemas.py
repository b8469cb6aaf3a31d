"""Wire shapes of the node endpoints: what a node reports, what an operator reads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from control.domain.nodes import NodeHealth, NodeStatus
from control.domain.records import Node, ServedModel


class ServedModelIn(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="Public model name tenants send")]
    engine_model: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=1000,
            description="What the engine expects in `model` (vLLM: its served name; transformers serve: the model dir)",
        ),
    ]


class GpuIn(msgspec.Struct):
    index: int
    used_mib: int
    total_mib: int


class ExpertLayer(msgspec.Struct):
    layer: int
    load: Annotated[list[int], msgspec.Meta(description="Tokens routed to each expert")]
    utilisation: Annotated[list[float], msgspec.Meta(description="load ÷ fair share; 1.0 is perfect balance")] = []
    load_entropy: float | None = None
    mean_router_entropy: float | None = None


class ExpertLoad(msgspec.Struct):
    """Expert routing load where the engine (or the node agent's probe) can tell."""

    tokens: int = 0
    experts: int = 0
    top_k: int = 0
    layers: list[ExpertLayer] = []


class NodeReport(msgspec.Struct):
    """Body of register and heartbeat. Unknown fields are ignored, so nodes can be newer
    than the control plane. Registration needs `engine`, `base_url` and `models`."""

    state: Annotated[str, msgspec.Meta(description="starting | healthy | restarting | draining | stopped | failed")]
    engine: str | None = None
    base_url: Annotated[str | None, msgspec.Meta(description="Engine URL on a loopback/private address")] = None
    models: list[ServedModelIn] | None = None
    requests_in_flight: Annotated[int | None, msgspec.Meta(description="As the engine counts them; null: unknown")] = None
    gpus: list[GpuIn] | None = None
    pid: int | None = None
    restarts: int = 0
    consecutive_crashes: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    healthy_since: str | None = None
    model_info: dict[str, Any] | None = None
    expert_load: ExpertLoad | None = None

    def dynamic(self) -> dict[str, Any]:
        """What is stored as the node's last report (the static part has columns)."""
        body: dict[str, Any] = msgspec.to_builtins(self)  # a Struct becomes a dict
        for static in ("state", "engine", "base_url", "models"):
            body.pop(static, None)
        return body

    def served_models(self) -> list[ServedModel] | None:
        return None if self.models is None else [ServedModel(m.name, m.engine_model) for m in self.models]


class NodeCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="A label for people, e.g. the host")]


class NodeOut(msgspec.Struct):
    id: str
    name: str
    status: Annotated[
        NodeStatus,
        msgspec.Meta(
            description="healthy (heartbeats say healthy and the gateway's breaker is closed) | unhealthy (heartbeats "
            "say healthy, but the gateway's circuit breaker for the node is open or half-open: requests to it failed) | "
            "draining (operator) | unregistered | stale (heartbeat too old) | "
            "the engine's state (starting, restarting, draining, stopped, failed)"
        ),
    ]
    status_reason: Annotated[str | None, msgspec.Meta(description="Why the node is not healthy; null when it is")]
    state: Annotated[str, msgspec.Meta(description="The engine state last reported")]
    draining: bool
    engine: str
    base_url: str
    models: list[ServedModelIn]
    created_at: datetime
    registered_at: datetime | None
    last_heartbeat_at: datetime | None
    gateway_in_flight: Annotated[int, msgspec.Meta(description="Requests this control plane has open to the node")]
    breaker: Annotated[str, msgspec.Meta(description="closed | half_open | open")]
    report: Annotated[dict[str, Any], msgspec.Meta(description="The node's last heartbeat (in flight, GPUs, expert load, ...)")]

    @classmethod
    def of(cls, node: Node, *, health: NodeHealth, gateway_in_flight: int, breaker: str) -> NodeOut:
        return cls(
            id=node.id,
            name=node.name,
            status=health.status,
            status_reason=health.reason,
            state=node.state,
            draining=node.draining,
            engine=node.engine,
            base_url=node.base_url,
            models=[ServedModelIn(m.name, m.engine_model) for m in node.models],
            created_at=node.created_at,
            registered_at=node.registered_at,
            last_heartbeat_at=node.last_heartbeat_at,
            gateway_in_flight=gateway_in_flight,
            breaker=breaker,
            report=node.report,
        )


class NodeEnrolled(msgspec.Struct):
    node: NodeOut
    token: Annotated[str, msgspec.Meta(description="The node token, shown once: give it to `moorage node run`")]


class NodeList(msgspec.Struct):
    items: list[NodeOut]


class NodeAck(msgspec.Struct):
    id: str
    status: Annotated[NodeStatus, msgspec.Meta(description="As GET /v1/nodes/{node} reports it")]
    draining: bool
    stale_after_s: Annotated[int, msgspec.Meta(description="Heartbeat at least this often to stay routable")]
