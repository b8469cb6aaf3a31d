"""HTTP health checks of a freshly started container, and of a route through Traefik.

Not behind a circuit breaker on purpose: a tenant's app failing its check says nothing
about a shared dependency, and must not open a breaker for every other tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str  # the last answer or error, for the deployment's reason
    elapsed: float


FIRST_INTERVAL_S = 0.01
BACKOFF = 1.2


def intervals(first: float, longest: float) -> Iterator[float]:
    """Pauses between polls: ``first`` (10 ms), then 20% longer each time up to ``longest``.
    What is polled for (an app that has just started, Traefik reloading a route) usually
    comes within a few hundred milliseconds: a fixed long pause added up to a whole pause
    to every deploy, a short one forever would poll a slow app hundreds of times."""
    pause = first
    while True:
        yield pause
        pause = min(longest, pause * BACKOFF)


def wait_healthy(
    url: str, *, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.2, host: str | None = None
) -> HealthResult:
    """Poll ``url`` until it answers 2xx/3xx, ``alive()`` turns false (the container exited)
    or ``timeout`` passes; polls start 10 ms apart and back off to ``interval``."""
    started = time.monotonic()
    last = "no answer yet"
    checked_alive = started
    headers = {"Host": host} if host else None
    pauses = intervals(min(FIRST_INTERVAL_S, interval), interval)
    with httpx.Client(timeout=min(2.0, timeout), follow_redirects=False) as client:
        while (elapsed := time.monotonic() - started) < timeout:
            try:
                answer = client.get(url, headers=headers)
                if 200 <= answer.status_code < 400:
                    return HealthResult(True, f"HTTP {answer.status_code}", elapsed)
                last = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"[:200]
            if time.monotonic() - checked_alive >= 1.0:
                checked_alive = time.monotonic()
                if not alive():
                    return HealthResult(False, f"the container exited ({last})", time.monotonic() - started)
            time.sleep(next(pauses))
    return HealthResult(False, last, time.monotonic() - started)


def wait_header(url: str, host: str, header: str, value: str, *, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``url`` (Traefik) answers for ``host`` with ``header: value``; None on
    timeout. Polls start 10 ms apart and back off to ``interval``."""
    return _wait_answer(url, host, lambda answer: answer.headers.get(header) == value, timeout=timeout, interval=interval)


def wait_header_gone(url: str, host: str, header: str, *, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``url`` (Traefik) answers for ``host`` without ``header`` (its own 404
    once the route is gone), or cannot be reached at all (then it routes nothing); None on
    timeout."""
    return _wait_answer(
        url, host, lambda answer: header not in answer.headers, timeout=timeout, interval=interval, unreachable_is_done=True
    )


def _wait_answer(
    url: str,
    host: str,
    done: Callable[[httpx.Response], bool],
    *,
    timeout: float,
    interval: float,
    unreachable_is_done: bool = False,
) -> float | None:
    started = time.monotonic()
    pauses = intervals(min(FIRST_INTERVAL_S, interval), interval)
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - started < timeout:
            try:
                if done(client.get(url, headers={"Host": host})):
                    return time.monotonic() - started
            except httpx.ConnectError:
                if unreachable_is_done:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(next(pauses))
    return None
