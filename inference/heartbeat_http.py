"""Heartbeats to the control plane: register once, then heartbeat; register again when
the control plane says it does not know the node (409 ``node-not-registered``).

The node token travels only in the Authorization header; it is never logged (errors are
reported by status and problem code). Runs on the supervisor's heartbeat thread, so it
is synchronous; the supervisor logs and survives any exception raised here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import structlog

from inference.engine.status import NodeStatus

NODE_TOKEN_PREFIX = "mrg_node_"


class HeartbeatRejected(RuntimeError):
    """The control plane refused a heartbeat (the message names the status and problem code)."""


def node_id_of(token: str) -> str:
    """The node id inside ``mrg_node_<node id>_<secret>`` (the secret never leaves this function)."""
    if not token.startswith(NODE_TOKEN_PREFIX):
        raise ValueError("a node token starts with 'mrg_node_' (from POST /v1/nodes)")
    parts = token[len(NODE_TOKEN_PREFIX) :].split("_", 2)
    if len(parts) != 3 or parts[0] != "node":
        raise ValueError("malformed node token: expected mrg_node_node_<id>_<secret>")
    return f"node_{parts[1]}"


class HttpHeartbeatSink:
    def __init__(
        self,
        control_url: str,
        node_token: str,
        *,
        public_model: str,
        extra: Callable[[], dict[str, Any]] | None = None,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.node_id = node_id_of(node_token)
        self.public_model = public_model
        self._extra = extra
        self._registered = False
        self._client = httpx.Client(
            base_url=control_url.rstrip("/"),
            headers={"Authorization": f"Bearer {node_token}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._log = structlog.get_logger("inference.heartbeat").bind(node_id=self.node_id)

    def body(self, status: NodeStatus) -> dict[str, Any]:
        body = status.to_dict()
        body["models"] = [{"name": self.public_model, "engine_model": status.model}]
        if self._extra is not None:
            body.update(self._extra())
        return body

    def send_heartbeat(self, status: NodeStatus) -> None:
        body = self.body(status)
        if not self._registered:
            self._register(body)
            return
        response = self._client.post(f"/v1/nodes/{self.node_id}/heartbeat", json=body)
        if response.status_code == 409:  # the control plane forgot us (e.g. a restored database)
            self._registered = False
            self._register(body)
            return
        self._check(response, "heartbeat")

    def _register(self, body: dict[str, Any]) -> None:
        response = self._client.post("/v1/nodes/register", json=body)
        self._check(response, "register")
        self._registered = True
        self._log.info("node_registered", status=response.json().get("status"), model=self.public_model)

    @staticmethod
    def _check(response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            code = ""
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                code = response.json().get("code", "")
            raise HeartbeatRejected(f"{what} refused: HTTP {response.status_code} {code}".rstrip())

    def close(self) -> None:
        self._client.close()
