"""Inference nodes: operators enroll, list, drain and delete them; nodes register and
heartbeat with their own token (see ``node_auth``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import endpoint
from control.api.node_auth import (
    NODE_ACCESS,
    NODE_SECURITY,
    authenticated_node,
    node_token_guard,
)
from control.api.node_schemas import (
    NodeAck,
    NodeCreate,
    NodeEnrolled,
    NodeList,
    NodeOut,
    NodeReport,
)
from control.api.problems import problem_responses
from control.domain.inference import Inference
from control.domain.nodes import NodeRegistration
from control.domain.records import Node
from control.security.scopes import OPERATOR_ACCESS


def node_out(inference: Inference, node: Node) -> NodeOut:
    return NodeOut.of(
        node,
        health=inference.health(node),
        gateway_in_flight=inference.router.in_flight(node.id),
        breaker=inference.router.breaker_state(node.id),
    )


class NodeController(Controller):
    path = "/v1/nodes"
    tags = ("inference nodes (operator)",)

    @endpoint("POST", access=OPERATOR_ACCESS, summary="Enroll an inference node (its token is shown once)", status_code=201)
    def enroll(
        self, request: Request[Any, Any, Any], inference: NamedDependency[Inference], data: JSONBody[NodeCreate]
    ) -> NodeEnrolled:
        enrolled = inference.nodes.enroll(data.name, request.user.key_id)
        return NodeEnrolled(node=node_out(inference, enrolled.node), token=enrolled.token)

    @endpoint("GET", access=OPERATOR_ACCESS, summary="List inference nodes and their health")
    def list(self, inference: NamedDependency[Inference]) -> NodeList:
        return NodeList(items=[node_out(inference, n) for n in inference.nodes.live()])

    @endpoint("GET", "/{node:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Get an inference node")
    def get(self, inference: NamedDependency[Inference], node: FromPath[str]) -> NodeOut:
        return node_out(inference, inference.nodes.get(node))

    @endpoint(
        "POST", "/{node:str}/drain", access=OPERATOR_ACCESS, errors=(404,), summary="Stop routing new requests to a node",
        status_code=200,
    )  # fmt: skip
    def drain(self, inference: NamedDependency[Inference], node: FromPath[str]) -> NodeOut:
        """Requests already running finish; the node stays enrolled and keeps heartbeating."""
        return node_out(inference, inference.nodes.set_draining(node, True))

    @endpoint(
        "POST", "/{node:str}/resume", access=OPERATOR_ACCESS, errors=(404,), summary="Route to a drained node again",
        status_code=200,
    )  # fmt: skip
    def resume(self, inference: NamedDependency[Inference], node: FromPath[str]) -> NodeOut:
        return node_out(inference, inference.nodes.set_draining(node, False))

    @endpoint("DELETE", "/{node:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Delete a node (revokes its token)")
    def remove(self, inference: NamedDependency[Inference], node: FromPath[str]) -> None:
        inference.nodes.delete(node)


def node_endpoint(path: str, *, summary: str, description: str, audited: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """A route only inference nodes call: node token, no API key (see node_auth)."""
    return post(
        path,
        opt={"public": True, "access": NODE_ACCESS, "audited": audited},
        guards=[node_token_guard],
        security=NODE_SECURITY,
        responses=problem_responses(400, 401, 403, 409, 422, 429),
        summary=summary,
        description=description,
        tags=["inference nodes (node agent)"],
        status_code=200,
        sync_to_thread=True,
    )


def _registration(report: NodeReport) -> NodeRegistration:
    return NodeRegistration(
        state=report.state,
        report=report.dynamic(),
        engine=report.engine,
        base_url=report.base_url,
        models=report.served_models(),
    )


def _ack(inference: Inference, node: Node) -> NodeAck:
    return NodeAck(
        id=node.id,
        status=inference.health(node).status,
        draining=node.draining,
        stale_after_s=int(inference.nodes.stale_after.total_seconds()),
    )


@node_endpoint(
    "/v1/nodes/register",
    summary="A node registers: engine, base URL, models served",
    description="Called by `moorage node run` with its node token when it starts (and again if the control plane "
    "forgot it). `models[].name` is the public name tenants use; `engine_model` what the engine expects.",
)
def register_node(request: Request[Any, Any, Any], inference: NamedDependency[Inference], data: JSONBody[NodeReport]) -> NodeAck:
    return _ack(inference, inference.nodes.register(authenticated_node(request), _registration(data)))


@node_endpoint(
    "/v1/nodes/{node:str}/heartbeat",
    summary="A node's heartbeat: engine state, requests in flight, GPU memory, expert load",
    description="A node whose last heartbeat is older than `stale_after_s` is not routed to. 409 "
    "`node-not-registered`: register first.",
    audited=False,  # every 10 s per node: the node's own row records its latest state
)
def node_heartbeat(
    request: Request[Any, Any, Any], inference: NamedDependency[Inference], node: FromPath[str], data: JSONBody[NodeReport]
) -> NodeAck:
    return _ack(inference, inference.nodes.heartbeat(authenticated_node(request), _registration(data)))


NODE_ROUTES = [NodeController, register_node, node_heartbeat]
