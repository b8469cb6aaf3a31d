"""Inference nodes: operator enrollment (token shown once), node registration and
heartbeats, drain, delete, and which nodes the gateway may route to.

A node is *healthy* (routable) when it is not deleted, not drained by an operator, its
engine last reported ``healthy``, and that report is at most ``stale_after_s`` old. What
operators read also weighs the gateway's own evidence, its circuit breaker for the node
(``Inference.health``): heartbeats alone lag an engine's death by up to an interval.
The gateway asks ``routable()`` on every request, so it reads a snapshot cached for
``cache_ttl_s`` (every change made through this service drops it at once).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from control.clock import utcnow
from control.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
)
from control.domain.names import MODEL_NAME, NODE_NAME
from control.domain.records import Node, ServedModel
from control.security.node_tokens import issue_node_token, parse_node_id, token_matches
from control.store.database import Store
from control.store.repositories.nodes import NodeRepository

_BAD_TOKEN = "The node token is missing or not valid. Send 'Authorization: Bearer mrg_node_...' (from POST /v1/nodes)."
ENGINE_STATES = frozenset({"starting", "healthy", "restarting", "draining", "stopped", "failed"})
NodeStatus = Literal["healthy", "unhealthy", "draining", "unregistered", "stale", "starting", "restarting", "stopped", "failed"]


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """A node's status and, unless it is healthy, why, in words an operator can act on."""

    status: NodeStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EnrolledNode:
    node: Node
    token: str


@dataclass(frozen=True, slots=True)
class NodeRegistration:
    """What a node says about itself; the static part (engine, base URL, models) is
    required to register and optional on heartbeats."""

    state: str
    report: dict[str, Any]
    engine: str | None = None
    base_url: str | None = None
    models: list[ServedModel] | None = None


def health_of(node: Node, now: datetime, stale_after: timedelta) -> NodeHealth:
    """healthy | draining (operator) | unregistered | stale (no recent heartbeat) | the engine's state."""
    if node.draining:
        return NodeHealth("draining", f"Drained by an operator: no new requests go to it (POST /v1/nodes/{node.id}/resume).")
    if node.registered_at is None or node.last_heartbeat_at is None:
        return NodeHealth("unregistered", "Enrolled, but its node agent has not registered yet (`moorage node run`).")
    silent = now - node.last_heartbeat_at
    if silent > stale_after:
        return NodeHealth(
            "stale",
            f"No heartbeat for {silent.total_seconds():.0f} s (stale after {stale_after.total_seconds():.0f} s): "
            "is its node agent running and able to reach the control plane?",
        )
    if node.state == "healthy":
        return NodeHealth("healthy")
    error = node.report.get("last_error")
    return NodeHealth(cast(NodeStatus, node.state), f"Its engine reports '{node.state}'" + (f": {error}" if error else "."))


def check_engine_url(base_url: str) -> str:
    """Engines are unauthenticated: the gateway only talks to loopback/private addresses."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    problem = None
    if parts.scheme not in {"http", "https"} or not host or parts.path not in {"", "/"} or parts.query:
        problem = "must be http(s)://HOST:PORT with no path"
    elif host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not (address.is_loopback or address.is_private) or address.is_unspecified:
            problem = "must be a loopback or private IP address (engines have no authentication of their own)"
    if problem:
        raise Invalid(f"'base_url' {problem}.", errors=[{"field": "base_url", "message": problem}])
    return base_url.rstrip("/")


class NodeService:
    def __init__(
        self,
        db: Store,
        *,
        stale_after_s: float,
        cache_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.stale_after = timedelta(seconds=stale_after_s)
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: tuple[float, list[Node]] | None = None

    # ---- operator ----

    def enroll(self, name: str, created_by: str | None) -> EnrolledNode:
        if not name.strip():
            raise Invalid("'name' must not be blank.", errors=[{"field": "name", "message": "must not be blank"}])
        NODE_NAME.check("name", name)
        issued = issue_node_token()
        with self.db.write() as session:
            node = NodeRepository(session).add(id=issued.id, name=name, secret_hash=issued.secret_hash, created_by=created_by)
        self._changed()
        return EnrolledNode(node, issued.token)

    def live(self) -> list[Node]:
        with self.db.read() as session:
            return NodeRepository(session).live()

    def get(self, node_id: str) -> Node:
        with self.db.read() as session:
            node = NodeRepository(session).get(node_id)
        if node is None or node.revoked_at is not None:
            raise NotFound.of("node", node_id)
        return node

    def set_draining(self, node_id: str, draining: bool) -> Node:
        self.get(node_id)
        with self.db.write() as session:
            node = NodeRepository(session).set_draining(node_id, draining)
        self._changed()
        assert node is not None
        return node

    def delete(self, node_id: str) -> None:
        """The node disappears from listings and routing; its token stops working."""
        self.get(node_id)
        with self.db.write() as session:
            NodeRepository(session).revoke(node_id, utcnow())
        self._changed()

    def health(self, node: Node) -> NodeHealth:
        """As heartbeats tell it; ``Inference.health`` adds the gateway's breaker."""
        return health_of(node, utcnow(), self.stale_after)

    # ---- node ----

    def authenticate(self, token: str | None) -> Node:
        node_id = parse_node_id(token or "")
        if token is None or node_id is None:
            raise Unauthenticated(_BAD_TOKEN, code="node-token-invalid")
        with self.db.read() as session:
            node = NodeRepository(session).get(node_id)
        if node is None or not token_matches(token, node.secret_hash):
            raise Unauthenticated(_BAD_TOKEN, code="node-token-invalid")
        if node.revoked_at is not None:
            raise Unauthenticated(
                f"Node {node.id} was deleted; its token no longer works. Enroll the node again (POST /v1/nodes).",
                code="node-token-revoked",
            )
        return node

    def register(self, node: Node, registration: NodeRegistration) -> Node:
        if not registration.engine or not registration.base_url or not registration.models:
            missing = [f for f in ("engine", "base_url", "models") if not getattr(registration, f)]
            raise Invalid(
                f"Registration needs {', '.join(missing)}.",
                errors=[{"field": f, "message": "required to register"} for f in missing],
            )
        return self._report(node, registration, register=True)

    def heartbeat(self, node: Node, registration: NodeRegistration) -> Node:
        if node.registered_at is None:
            raise Conflict(f"Node {node.id} has not registered yet: POST /v1/nodes/register first.", code="node-not-registered")
        return self._report(node, registration, register=False)

    def _report(self, node: Node, registration: NodeRegistration, *, register: bool) -> Node:
        if registration.state not in ENGINE_STATES:
            raise Invalid(
                f"'state' must be one of {sorted(ENGINE_STATES)}.",
                errors=[{"field": "state", "message": f"one of {sorted(ENGINE_STATES)}"}],
            )
        for index, model in enumerate(registration.models or []):
            MODEL_NAME.check(f"models[{index}].name", model.name)
        base_url = check_engine_url(registration.base_url) if registration.base_url else None
        with self.db.write() as session:
            updated = NodeRepository(session).report(
                node.id,
                when=utcnow(),
                state=registration.state,
                report=registration.report,
                register=register,
                engine=registration.engine,
                base_url=base_url,
                models=registration.models,
            )
        self._changed()
        if updated is None:  # deleted between authentication and now
            raise Forbidden(f"Node {node.id} was deleted.", code="node-token-revoked")
        return updated

    # ---- gateway ----

    def snapshot(self) -> list[Node]:
        """Every live node (cached for ``cache_ttl_s``)."""
        now = self._clock()
        with self._lock:
            if self._cache is not None and self._cache[0] > now:
                return self._cache[1]
        nodes = self.live()
        with self._lock:
            self._cache = (now + self.cache_ttl_s, nodes)
        return nodes

    def serving(self, model: str) -> list[tuple[Node, ServedModel]]:
        """Live nodes that advertise ``model``, healthy or not."""
        return [(n, m) for n in self.snapshot() for m in n.models if m.name == model]

    def routable(self, model: str) -> list[tuple[Node, ServedModel]]:
        now = utcnow()
        return [(n, m) for n, m in self.serving(model) if health_of(n, now, self.stale_after).status == "healthy"]

    def models(self) -> list[str]:
        """Public model names with at least one healthy node."""
        now = utcnow()
        names = {m.name for n in self.snapshot() if health_of(n, now, self.stale_after).status == "healthy" for m in n.models}
        return sorted(names)

    def _changed(self) -> None:
        with self._lock:
            self._cache = None
