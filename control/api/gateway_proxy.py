"""The gateway's upstream side: pick a node, send the request, fail over, relay.

Failover happens only while the client has seen nothing: a connect failure, a timeout
or a 5xx (or, when streaming, a stream that breaks before its first token) records a
failure on that node's breaker and the next node is tried. A stream's events before its
first token (the role announcement, empty deltas) are held back, not sent: they say
nothing another node cannot say too, and the response (its 200 included) starts only
with the first token, so a node that dies before it is replaced invisibly and the client
sees one role event, from the node that answers. Once a token has gone to the client, a
broken stream ends with an error event (``data: {"error": {...}}``, no ``[DONE]``) and
the breaker records the failure. Only the node that answers is billed: the usage row is
written once per request, for the node that served it.

Streams are relayed as they arrive (each event re-encoded: ``model`` becomes the public
name, and the usage the gateway asked for is removed when the client did not ask; the
events one read from the engine brought go to the client in one write), with a keep-alive
comment when the engine is silent, and always end with ``data: [DONE]`` (``transformers
serve`` omits it). Nothing is buffered beyond what one read brought, except the events
before the first token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec
import structlog

from control.api.gateway_sse import (
    DONE,
    KEEPALIVE,
    error_event,
    event,
    sse_batches,
    with_keepalive,
)
from control.domain.gateway_routing import NodeRouter
from control.domain.records import Node, ServedModel
from control.settings import Settings
from runtime.resilience import CircuitOpenError

KEEPALIVE_S = 15.0
log = structlog.get_logger("moorage.gateway")


class Upstream:
    """One pooled httpx.AsyncClient to every node, created in the serving event loop."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = httpx.Timeout(
            connect=settings.inference_connect_timeout_s,
            read=settings.inference_read_timeout_s,  # also bounds the wait for the first token
            write=30.0,
            pool=10.0,
        )
        self.limits = httpx.Limits(
            max_connections=settings.inference_max_connections,
            max_keepalive_connections=min(50, settings.inference_max_connections),
        )
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=self.limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass
class Call:
    """One tenant request on its way through the gateway."""

    endpoint: str  # chat.completions | completions
    path: str  # /v1/chat/completions | /v1/completions
    model: str  # public name
    body: dict[str, Any]  # what goes upstream, `model` filled in per node
    stream: bool
    client_wants_usage: bool
    request_id: str
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Outcome:
    """What happened, for the usage row and metrics."""

    node_id: str | None = None
    status: str = "error"  # ok | error | rejected | cancelled | stalled
    http_status: int = 503
    usage: dict[str, Any] | None = None
    content_events: int = 0
    finished: bool = False  # a finish_reason or [DONE] was seen
    ttft_s: float | None = None
    ended: float | None = None


@dataclass
class Answer:
    """A non-streamed answer, or the start of a stream (up to its first token) and the open response."""

    node: Node
    status_code: int
    content: bytes = b""
    response: httpx.Response | None = None
    events: AsyncIterator[list[bytes]] | None = None
    first: list[bytes] | None = None  # the events held back until the first token, that one included


class UpstreamFailed(Exception):
    """Every node was tried (or skipped: breaker open) and none answered."""

    def __init__(self, tried: list[str]) -> None:
        super().__init__(f"no node answered (tried {len(tried)})")
        self.tried = tried


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.HTTPError, StopAsyncIteration, msgspec.DecodeError))


async def open_answer(upstream: Upstream, router: NodeRouter, call: Call, candidates: list[tuple[Node, ServedModel]]) -> Answer:
    """Send ``call`` to the first node that answers; the caller owns the returned stream.
    For a stream, the node's in-flight count and breaker verdict stay open until the relay ends."""
    client = upstream.client()
    tried: list[str] = []
    for node_id, (node, served) in router.order([(n.id, (n, m)) for n, m in candidates]):
        breaker = router.breaker(node_id)
        try:
            breaker.before_call()
        except CircuitOpenError:
            continue
        tried.append(node_id)
        router.begin(node_id)
        committed = False
        try:
            request = client.build_request("POST", node.base_url + call.path, json={**call.body, "model": served.engine_model})
            response = await client.send(request, stream=True)
            if response.status_code >= 500:
                await response.aclose()
                raise httpx.HTTPStatusError(f"engine answered {response.status_code}", request=request, response=response)
            if not call.stream or response.status_code != 200:
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
                breaker.record_success()  # 2xx or 4xx: the engine is up and answered
                return Answer(node, response.status_code, content=content)
            events = sse_batches(response)
            try:
                first = await read_until_token(events)  # failover is still possible until this is relayed
            except BaseException:
                await response.aclose()
                raise
            committed = True
            return Answer(node, 200, response=response, events=events, first=first)
        except Exception as exc:
            if not _is_transient(exc):
                breaker.release()
                raise
            breaker.record_failure()
            log.warning(
                "inference_node_failed", node_id=node_id, request_id=call.request_id, error=type(exc).__name__,
                detail=str(exc)[:200],
            )  # fmt: skip
        except BaseException:  # cancelled: the client left; no verdict on the node
            breaker.release()
            raise
        finally:
            if not committed:  # a stream's relay ends it
                router.end(node_id)
    raise UpstreamFailed(tried)


async def read_until_token(events: AsyncIterator[list[bytes]]) -> list[bytes]:
    """The stream's events up to and including the first that commits it to this node (see
    ``commits``). Raises ``StopAsyncIteration`` if the stream ends before one, and whatever
    reading raised if the node failed: the caller fails over then."""
    held: list[bytes] = []
    while True:
        batch = await events.__anext__()
        held += batch
        if any(commits(data) for data in batch):
            return held


def commits(data: bytes) -> bool:
    """Whether relaying this event ties the answer to this node: it brings generated output
    (content, text, a tool call, reasoning: anything in a delta besides its role), a
    finish_reason, usage, an error, or is ``[DONE]``. An event that is not a JSON object
    raises ``msgspec.DecodeError``: the node is failing, and nothing has been sent yet."""
    if data.strip() == b"[DONE]":
        return True
    chunk = msgspec.json.decode(data)
    if not isinstance(chunk, dict):
        raise msgspec.DecodeError("stream event is not a JSON object")
    if "error" in chunk or chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(value for key, value in delta.items() if key != "role"):
            return True
    return False


def rewrite_chunk(data: bytes, call: Call, outcome: Outcome) -> bytes | None:
    """One engine event as the client should see it (None: drop it)."""
    chunk = msgspec.json.decode(data)
    if not isinstance(chunk, dict):
        raise msgspec.DecodeError("stream event is not a JSON object")
    if "error" in chunk:
        raise EngineStreamError(str(chunk["error"])[:500])
    if chunk.get("usage"):
        outcome.usage = chunk["usage"]
        if not call.client_wants_usage:
            if not chunk.get("choices"):
                return None  # the usage-only chunk the gateway asked for
            del chunk["usage"]
    if "model" in chunk:
        chunk["model"] = call.model
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            outcome.finished = True
        delta = choice.get("delta") or {}
        if delta.get("content") or choice.get("text"):
            outcome.content_events += 1
            if outcome.ttft_s is None:
                outcome.ttft_s = time.perf_counter() - call.started
            break
    return event(chunk)


class EngineStreamError(Exception):
    """The engine sent an error event in the middle of a stream."""


class Relay:
    """The client's SSE stream of one answer. Its end (breaker verdict, in-flight count,
    upstream response, ``finish``: settlement, usage row, metrics) runs exactly once
    whatever happens: the stream ends, the engine fails, the client hangs up, or the
    stream is never iterated at all (the client left before the first byte went out and
    the server's ``send`` raised on the response's start, as ASGI 2.4 asks; a generator
    that never started never runs its ``finally``). The response that sends it must call
    ``close`` when it is done."""

    def __init__(
        self, answer: Answer, call: Call, router: NodeRouter, outcome: Outcome, finish: Callable[[Outcome], Awaitable[None]]
    ) -> None:
        assert answer.response is not None and answer.events is not None and answer.first is not None
        self.answer, self.call, self.router, self.outcome, self.finish = answer, call, router, outcome, finish
        self.response, self.upstream, self.first = answer.response, answer.events, answer.first
        self._verdict: Callable[[], None] = router.breaker(answer.node.id).release
        self._closed = False
        self._done = False  # the engine sent [DONE]

    async def events(self) -> AsyncIterator[bytes]:
        answer, call, outcome = self.answer, self.call, self.outcome
        breaker = self.router.breaker(answer.node.id)
        upstream = with_keepalive(self.upstream, KEEPALIVE_S)
        try:
            batch: list[bytes] | None = self.first
            while True:
                if batch is None:
                    yield KEEPALIVE
                else:
                    out, failure = self._rewrite(batch)
                    if out:
                        yield out
                    if failure is not None:
                        raise failure
                    if self._done:
                        break
                try:
                    batch = await upstream.__anext__()
                except StopAsyncIteration:
                    break
            if not outcome.finished:  # closed before a finish_reason: the engine died between two events
                raise EngineStreamError("the stream ended before a finish_reason")
            outcome.status, outcome.http_status, self._verdict = "ok", 200, breaker.record_success
            await self.close()  # settled (usage written) before the client sees the end: what it reads next counts this call
            yield DONE
        except (httpx.HTTPError, msgspec.DecodeError, EngineStreamError) as exc:
            outcome.status, outcome.http_status, self._verdict = "error", 502, breaker.record_failure
            log.warning("inference_stream_broken", node_id=answer.node.id, error=type(exc).__name__, detail=str(exc)[:200])
            await self.close()
            yield error_event(
                "The inference node failed in the middle of the response; what was streamed is incomplete. Retry the request.",
                code="inference-stream-interrupted",
                request_id=call.request_id,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()  # its reader task ends now, not when the generator is collected
                await self.close()

    def _rewrite(self, batch: list[bytes]) -> tuple[bytes, Exception | None]:
        """What the client gets for ``batch`` (one write), and the failure that stopped it
        part-way, if any: the events before a broken one still go out."""
        parts: list[bytes] = []
        try:
            for data in batch:
                if data.strip() == b"[DONE]":
                    self.outcome.finished = self._done = True
                    break
                out = rewrite_chunk(data, self.call, self.outcome)
                if out is not None:
                    parts.append(out)
        except (msgspec.DecodeError, EngineStreamError) as exc:
            return b"".join(parts), exc
        return b"".join(parts), None

    def stalled(self) -> None:
        """The client stopped taking data: the stream is cut off (``close`` settles it)."""
        if self.outcome.http_status != 502:  # an engine failure stays what it was
            self.outcome.status, self.outcome.http_status = "stalled", 408
        log.warning("inference_stream_stalled", node_id=self.answer.node.id, request_id=self.call.request_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.outcome.status not in {"ok", "stalled"} and self.outcome.http_status != 502:
            self.outcome.status, self.outcome.http_status = "cancelled", 499  # the client went away
        self.outcome.ended = time.perf_counter()
        self._verdict()
        self.router.end(self.answer.node.id)
        with anyio.CancelScope(shield=True):
            await self.response.aclose()
            await self.finish(self.outcome)
