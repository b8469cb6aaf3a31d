"""HTTP calls with the two promises agents rely on.

1. Every mutating call carries an ``Idempotency-Key``, the same one across retries, so a
   retried POST can never create a second resource.
2. 429 and 503 (and connection failures) are retried with backoff, honouring
   ``Retry-After``, for up to a time budget; then the last problem is reported. So is 409
   ``idempotency-key-in-flight``: a retry that reached the server while the first attempt
   (whose answer was lost) is still running waits for that attempt's answer.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from control.cli.client import exit_codes
from control.cli.client.config import ClientConfig
from control.cli.client.terminal import terminal_safe
from control.http_methods import MUTATING

RETRYABLE_STATUS = {429, 502, 503, 504}
IN_FLIGHT = "idempotency-key-in-flight"
MAX_RETRY_AFTER_S = 60.0
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=10)


@dataclass
class ApiError(Exception):
    """A problem+json answer (or an unreachable server), ready to print."""

    status: int
    problem: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return exit_codes.for_status(self.status) if self.status else exit_codes.UNAVAILABLE

    def __str__(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or f"HTTP {self.status}")


class _Retryable(Exception):
    def __init__(self, error: ApiError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers["retry-after"]), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return None


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": response.reason_phrase, "detail": response.text[:500]}
    return body if isinstance(body, dict) else {"detail": str(body)}


class ApiClient:
    def __init__(
        self,
        config: ClientConfig,
        *,
        retry_for_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        notify: Any = None,
    ) -> None:
        headers = {"User-Agent": "moorage-cli"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._http = httpx.Client(base_url=config.url, headers=headers, timeout=30.0, transport=transport)
        self.retry_for_s = retry_for_s
        self._notify = notify or (lambda line: print(terminal_safe(line), file=sys.stderr))

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        """``idempotent=False`` sends no Idempotency-Key and retries only answers the
        server gave before doing anything (429/503), never a lost connection: with no key
        a resent request could create a second resource."""
        headers = dict(headers or {})
        if method in MUTATING and idempotent:
            headers["Idempotency-Key"] = f"cli-{uuid.uuid4()}"

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Retryable) and (idempotent or exc.error.status in (429, 503))

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            wait=self._wait,
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(method, path, json=json, params=params, content=content, headers=headers)
        except _Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            error = ApiError(0, {"title": "unreachable", "detail": f"cannot reach {self._http.base_url}: {exc}"})
            raise _Retryable(error, None) from None
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(ApiError(response.status_code, _problem(response)), _retry_after(response))
        if response.status_code == 409 and (problem := _problem(response)).get("code") == IN_FLIGHT:
            raise _Retryable(ApiError(409, problem), _retry_after(response))
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem(response))
        if response.status_code == 204 or not response.content:
            return None
        if "json" not in response.headers.get("content-type", "json"):
            return response.text  # plain-text logs
        return response.json()

    @contextmanager
    def stream(self, endpoint: str, *, method: str = "GET", json: Any = None, **params: Any) -> Iterator[httpx.Response]:
        """A long answer (SSE): opening it is retried; the body has no read timeout
        because the server sends its own keep-alives. A streamed POST carries no
        Idempotency-Key (the server would buffer the whole answer to store it), so it is
        retried only on 429/503, never on a lost connection."""
        query = {k: v for k, v in params.items() if v is not None}

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Retryable) and (method == "GET" or exc.error.status in (429, 503))

        retrying = Retrying(
            retry=retry_if_exception(retryable), wait=self._wait, stop=stop_after_delay(self.retry_for_s), reraise=True
        )
        try:
            response = retrying(self._open, method, endpoint, query, json)  # `endpoint`: a query may be named `path`
        except _Retryable as exc:
            raise exc.error from None
        try:
            yield response
        finally:
            response.close()

    def _open(self, method: str, path: str, query: dict[str, Any], json: Any) -> httpx.Response:
        timeout = httpx.Timeout(30.0, read=None)
        request = self._http.build_request(method, path, params=query, json=json, timeout=timeout)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            error = ApiError(0, {"title": "unreachable", "detail": f"cannot reach {self._http.base_url}: {exc}"})
            raise _Retryable(error, None) from None
        if response.status_code >= 400:
            response.read()
            response.close()
            error = ApiError(response.status_code, _problem(response))
            if response.status_code in RETRYABLE_STATUS:
                raise _Retryable(error, _retry_after(response))
            raise error
        return response

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = exc.retry_after if isinstance(exc, _Retryable) else None
        seconds = hinted if hinted is not None else _BACKOFF(state)
        self._notify(f"moorage: {exc}; retrying in {seconds:.1f}s")
        return seconds

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def paginate(self, path: str, **params: Any) -> list[Any]:
        items: list[Any] = []
        cursor = None
        while True:
            page = self.get(path, limit=200, cursor=cursor, **params)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items
