"""HTTP calls with the two promises agents rely on.

1. Every mutating call carries an ``Idempotency-Key``, the same one across retries, so a
   retried POST can never create a second resource.
2. 429 and 503 (and connection failures) are retried with backoff, honouring
   ``Retry-After``, for up to a time budget; then the last problem is reported.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from control.cli.client import exit_codes
from control.cli.client.config import ClientConfig

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
RETRYABLE_STATUS = {429, 502, 503, 504}
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
        self._notify = notify or (lambda line: print(line, file=sys.stderr))

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = {"Idempotency-Key": f"cli-{uuid.uuid4()}"} if method in MUTATING else {}

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hinted = exc.retry_after if isinstance(exc, _Retryable) else None
            backoff = _BACKOFF(state)
            seconds = hinted if hinted is not None else backoff
            self._notify(f"moorage: {exc}; retrying in {seconds:.1f}s")
            return seconds

        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
            wait=wait,
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(method, path, json=json, params=params, headers=headers)
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
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem(response))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

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
