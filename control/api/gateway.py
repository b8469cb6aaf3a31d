"""The OpenAI-compatible gateway: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` for tenant keys with the ``inference`` scope.

Point an OpenAI client at ``<control plane>/v1`` with a tenant key. The request body is
OpenAI's, passed through; the gateway fills in what the node's engine expects as
``model``, sets ``max_tokens`` (``inference_default_max_tokens``) when the request names
none, and on streams asks for usage itself. Admission reserves prompt estimate +
max_tokens against the tenant's quotas (429 ``inference-rate-limited`` /
``inference-quota-exceeded``, with Retry-After); the end of the request settles it with
the engine's reported usage and writes a usage row (GET /v1/usage).

A stream's response starts with its first token: a node that fails before it is replaced
by the next one without the client seeing it (see ``gateway_proxy``). It is sent as fast
as the client takes it; a client that takes nothing for ``gateway_stream_idle_s`` (its
receive window stays full) is cut off: the engine request ends and the usage row says
``stalled``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
import msgspec
import structlog
from litestar import Request, Response
from litestar.di import NamedDependency
from litestar.params import Body
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control.api.endpoints import route
from control.api.gateway_proxy import (
    Answer,
    Call,
    Outcome,
    Relay,
    Upstream,
    UpstreamFailed,
    open_answer,
)
from control.api.inference_metrics import InferenceMetrics
from control.api.problems import problem_response, retry_after_header
from control.api.request_context import request_id_of
from control.clock import utcnow
from control.domain.errors import Invalid
from control.domain.inference import Inference
from control.domain.inference_quota import (
    QuotaExceeded,
    Reservation,
    estimate_prompt_tokens,
)
from control.domain.records import UsageRecord
from control.ids import new_id
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.settings import Settings

log = structlog.get_logger("moorage.gateway")
NO_NODE_RETRY_S = 5.0
OpenAIBody = Annotated[
    dict[str, Any],
    Body(description="OpenAI's request body, passed through to the engine. `model`: a name from GET /v1/models."),
]


class ModelOut(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "moorage"


class ModelList(msgspec.Struct):
    data: list[ModelOut]
    object: str = "list"


@route("GET", "/v1/models", access=KeyScope.INFERENCE, summary="Models served by healthy nodes (OpenAI list)", tags=["inference"])
async def list_models(inference: NamedDependency[Inference]) -> ModelList:
    names = await anyio.to_thread.run_sync(inference.nodes.models)
    return ModelList(data=[ModelOut(id=name) for name in names])


@route(
    "POST", "/v1/chat/completions", access=KeyScope.INFERENCE, errors=(404, 502, 503), audited=False,
    summary="Chat completion (OpenAI-compatible; `stream: true` for SSE)", tags=["inference"], status_code=200,
)  # fmt: skip
async def chat_completions(
    request: Request[Any, Principal, Any], gateway: NamedDependency[Gateway], data: OpenAIBody
) -> Response[Any]:
    return await _proxy(request, gateway, data, "chat.completions", "/v1/chat/completions")


@route(
    "POST", "/v1/completions", access=KeyScope.INFERENCE, errors=(404, 502, 503), audited=False,
    summary="Text completion (OpenAI-compatible; `stream: true` for SSE)", tags=["inference"], status_code=200,
)  # fmt: skip
async def completions(
    request: Request[Any, Principal, Any], gateway: NamedDependency[Gateway], data: OpenAIBody
) -> Response[Any]:
    return await _proxy(request, gateway, data, "completions", "/v1/completions")


@dataclass(frozen=True)
class Gateway:
    """What relaying a call needs: the nodes and quotas, the pooled upstream connections, the
    settings, and who observes each usage record (Prometheus)."""

    inference: Inference
    upstream: Upstream
    settings: Settings
    observer: InferenceMetrics | None = None


def gateway_dependency(
    inference: NamedDependency[Inference],
    upstream: NamedDependency[Upstream],
    settings: NamedDependency[Settings],
    inference_metrics: NamedDependency[InferenceMetrics],
) -> Gateway:
    return Gateway(inference, upstream, settings, inference_metrics)


def _field_error(name: str, message: str) -> Invalid:
    return Invalid(f"'{name}' {message}.", errors=[{"field": name, "message": message}])


def _positive_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise _field_error(name, "must be a positive integer")
    return value


def _prepare(data: dict[str, Any], endpoint: str, default_max_tokens: int) -> tuple[Call, int]:
    """The upstream call and the tokens to reserve."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _field_error("model", "is required: a name from GET /v1/models")
    if endpoint == "chat.completions" and (not isinstance(data.get("messages"), list) or not data["messages"]):
        raise _field_error("messages", "must be a non-empty list")
    if endpoint == "completions" and not data.get("prompt"):
        raise _field_error("prompt", "is required")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _field_error("stream", "must be true or false")
    body = dict(data)
    max_tokens = _positive_int(data, "max_completion_tokens") or _positive_int(data, "max_tokens")
    if max_tokens is None:  # an unbounded request cannot be reserved for
        max_tokens = body["max_tokens"] = default_max_tokens
    choices = _positive_int(data, "n") or 1
    options = data.get("stream_options")
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    if stream:
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    path = "/v1/chat/completions" if endpoint == "chat.completions" else "/v1/completions"
    call = Call(endpoint, path, model, body, stream, wants_usage, request_id="")
    return call, estimate_prompt_tokens(data) + max_tokens * choices


async def _proxy(
    request: Request[Any, Principal, Any], gateway: Gateway, data: dict[str, Any], endpoint: str, path: str
) -> Response[Any]:
    inference = gateway.inference
    call, reserve_tokens = _prepare(data, endpoint, gateway.settings.inference_default_max_tokens)
    call.request_id = request_id_of(request.scope)
    tenant_id, key_id = request.user.tenant_id, request.user.key_id
    assert tenant_id is not None  # the access guard admits tenant keys only
    # One trip to a worker thread before the first byte, not one per step.
    serving, routable, reservation = await anyio.to_thread.run_sync(_admit, inference, call.model, tenant_id, reserve_tokens)
    if not serving:
        detail = f"No node serves the model '{call.model}'. GET /v1/models lists the models available."
        return problem_response(request, 404, "inference-model-not-found", detail)
    if not routable:
        detail = (
            f"No healthy node serves '{call.model}' right now ({len(serving)} registered, none routable). "
            "Retry after Retry-After seconds."
        )
        return _unavailable(request, detail, NO_NODE_RETRY_S)
    if isinstance(reservation, QuotaExceeded):
        refused = {"Retry-After": retry_after_header(reservation.retry_after_s)}
        return problem_response(request, 429, reservation.code, reservation.detail, title="Inference quota", headers=refused)
    assert reservation is not None  # a routable node, and the quota admitted the request
    outcome = Outcome()
    finished = False

    async def finish(result: Outcome) -> None:
        nonlocal finished
        if not finished:
            finished = True
            await _settle(gateway, call, reservation, result, tenant_id, key_id)

    try:
        try:
            answer = await open_answer(gateway.upstream, inference.router, call, routable)
        except UpstreamFailed as exc:
            await finish(outcome)
            retry = inference.router.retry_after(exc.tried) if exc.tried else NO_NODE_RETRY_S
            return _unavailable(request, f"No node serving '{call.model}' answered; nothing was generated.", retry)
        outcome.node_id = answer.node.id
        if answer.response is not None:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            relay = Relay(answer, call, inference.router, outcome, finish)
            return RelayStream(relay, headers=headers, idle_s=gateway.settings.gateway_stream_idle_s)
        content = _final_body(answer, call, outcome)
        await finish(outcome)
        return Response(content, status_code=answer.status_code, media_type="application/json")
    except BaseException as exc:
        if not isinstance(exc, Exception):  # cancelled: the client went away
            outcome.status, outcome.http_status = "cancelled", 499
        with anyio.CancelScope(shield=True):
            await finish(outcome)
        raise


class RelayStream(Stream):
    """A relayed SSE stream whose end runs however the response ends, also when its body is
    never iterated (a client that left while the first token was on its way).

    A client that stops reading but keeps its connection open fills its receive window,
    and then every ``send`` waits on the server's flow control; the engine request, the
    node slot and the token reservation would be held as long as the client likes. So
    each send may wait at most ``idle_s`` (0: no limit): past that the stream is cut off
    and settled as ``stalled``. Only time without progress to the client counts: a slow
    engine, or a slow client that keeps reading, is never cut off."""

    def __init__(self, relay: Relay, headers: dict[str, str], idle_s: float = 0) -> None:
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self.relay, self.idle_s = relay, idle_s

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIApp:  # type: ignore[override]
        response, relay, idle_s = super().to_asgi_response(*args, **kwargs), self.relay, self.idle_s

        async def closing(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                if idle_s <= 0:
                    await response(scope, receive, send)
                    return
                with anyio.CancelScope() as cut:
                    watch = StallWatch(send, idle_s, cut)
                    try:
                        await response(scope, receive, watch.send)
                    finally:
                        watch.stop()
                if watch.tripped:  # the server closes a connection whose response it never saw finish
                    relay.stalled()
            finally:
                with anyio.CancelScope(shield=True):
                    await relay.close()

        return closing


class StallWatch:
    """Cuts a stream off (cancels ``scope``) once one send has waited ``idle_s``. One timer,
    armed when a send starts and none is pending, instead of a cancel scope around every
    send: sends are the stream's hot path, and almost all of them return at once."""

    def __init__(self, send: Send, idle_s: float, scope: anyio.CancelScope) -> None:
        self._send, self.idle_s, self.scope = send, idle_s, scope
        self._loop = asyncio.get_running_loop()
        self._sending_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.tripped = False

    async def send(self, message: Message) -> None:
        self._sending_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self.idle_s, self._check)
        try:
            await self._send(message)
        finally:
            self._sending_since = None

    def _check(self) -> None:
        self._timer = None
        since = self._sending_since
        if since is None:  # no send waiting: the next one arms the timer again
            return
        waited = self._loop.time() - since
        if waited >= self.idle_s:
            self.tripped = True
            self.scope.cancel()
        else:
            self._timer = self._loop.call_later(self.idle_s - waited, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _admit(
    inference: Inference, model: str, tenant_id: str, tokens: int
) -> tuple[list[Any], list[Any], Reservation | QuotaExceeded | None]:
    """The nodes serving ``model`` (all, routable) and, when one is routable, the quota's
    answer: a reservation of ``tokens``, or why not. Blocking."""
    serving, routable = inference.nodes.serving(model), inference.nodes.routable(model)
    if not routable:
        return serving, routable, None
    try:
        return serving, routable, inference.quota.reserve(tenant_id, tokens)
    except QuotaExceeded as exc:
        return serving, routable, exc


def _unavailable(request: Request[Any, Any, Any], detail: str, retry_after_s: float) -> Response[Any]:
    headers = {"Retry-After": retry_after_header(retry_after_s)}
    return problem_response(request, 503, "inference-unavailable", detail, title="Inference unavailable", headers=headers)


def _final_body(answer: Answer, call: Call, outcome: Outcome) -> bytes:
    outcome.http_status = answer.status_code
    outcome.ended = time.perf_counter()
    if answer.status_code != 200:
        outcome.status = "rejected"  # the engine refused the request (4xx): passed through as is
        return answer.content
    try:
        completion = msgspec.json.decode(answer.content)
    except msgspec.DecodeError:
        outcome.status = "error"
        return answer.content
    outcome.status = "ok"
    if isinstance(completion, dict):
        outcome.usage = completion.get("usage") if isinstance(completion.get("usage"), dict) else None
        completion["model"] = call.model
    return msgspec.json.encode(completion)


async def _settle(
    gateway: Gateway,
    call: Call,
    reservation: Reservation,
    outcome: Outcome,
    tenant_id: str,
    key_id: str,
) -> None:
    ended = outcome.ended or time.perf_counter()
    usage = outcome.usage or {}
    reported = isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int)
    if reported:
        prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    elif outcome.content_events:  # broken or abandoned stream: estimate what was generated
        prompt, completion = estimate_prompt_tokens(call.body), outcome.content_events
    else:
        prompt, completion = 0, 0
    record = UsageRecord(
        id=new_id("use"),
        tenant_id=tenant_id,
        api_key_id=key_id,
        request_id=call.request_id,
        model=call.model,
        node_id=outcome.node_id,
        endpoint=call.endpoint,
        stream=call.stream,
        status=outcome.status,
        http_status=outcome.http_status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        reserved_tokens=reservation.tokens,
        usage_reported=reported,
        latency_ms=round((ended - call.started) * 1000),
        ttft_ms=None if outcome.ttft_s is None else round(outcome.ttft_s * 1000),
        created_at=utcnow(),
    )
    try:
        await anyio.to_thread.run_sync(gateway.inference.quota.settle, reservation, record)
    except Exception as exc:  # noqa: BLE001 (the answer is already out; never break it, but say so loudly)
        log.error("inference_usage_write_failed", request_id=call.request_id, error=type(exc).__name__)
    if gateway.observer is not None:
        gateway.observer.observe(record)


GATEWAY_ROUTES = [list_models, chat_completions, completions]
__all__ = ["GATEWAY_ROUTES", "Gateway", "Upstream", "gateway_dependency"]
