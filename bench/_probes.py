"""What the benches time: the first 200 a Host answers with through Traefik."""

from __future__ import annotations

import time

import httpx


def first_200(client: httpx.Client, url: str, host: str, *, timeout: float, interval: float = 0.002) -> float:
    """perf_counter() at the first 200 for ``host`` via ``url``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(url, headers={"Host": host}).status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{host} never answered 200")
