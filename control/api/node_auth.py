"""Node-token authentication, kept apart from API keys.

Node routes are declared ``public`` for the API-key middleware (a node token is not an
API key: no tenant, no scopes, no per-key rate limit) and carry ``access="node"`` plus
``node_token_guard``, which checks ``Authorization: Bearer mrg_node_...`` and, on routes
with a ``{node}`` path parameter, that the token belongs to that node. The authenticated
node is left in ``scope["state"]["node"]`` for the handler (``authenticated_node``).
OpenAPI documents these routes with the ``NodeToken`` security scheme.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from control.api.auth import authenticate_throttled
from control.domain.errors import Forbidden
from control.domain.records import Node

NODE_ACCESS = "node"
NODE_SECURITY: list[dict[str, list[str]]] = [{"NodeToken": []}]
NODE_TOKEN_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="Node token, for inference nodes only: `Authorization: Bearer mrg_node_...` (POST /v1/nodes).",
)
_STATE_KEY = "node"


async def node_token_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    nodes = connection.app.state.services.inference.nodes
    node: Node = await authenticate_throttled(connection, nodes.authenticate)
    claimed = connection.path_params.get("node")
    if claimed is not None and claimed != node.id:
        raise Forbidden(f"This node token belongs to node {node.id}, not {claimed}.", code="node-mismatch")
    connection.scope.setdefault("state", {})[_STATE_KEY] = node


def authenticated_node(request: Request[Any, Any, Any]) -> Node:
    node = request.scope.get("state", {}).get(_STATE_KEY)
    assert isinstance(node, Node), "node_token_guard did not run"
    return node
