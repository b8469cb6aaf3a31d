"""Watching a hostname through Traefik while something else happens: every answer that is not
a 200 (or does not start with the expected body), and every transport error, is a failure."""

from __future__ import annotations

import threading
import time

import httpx


class HostWatch:
    def __init__(self, traefik_url: str, host: str, *, body_prefix: str = "") -> None:
        self.url, self.host, self.body_prefix = traefik_url + "/", host, body_prefix
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HostWatch:
        self._thread.start()
        return self

    def __enter__(self) -> HostWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=3.0) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url, headers={"Host": self.host})
                    if r.status_code != 200 or not r.text.startswith(self.body_prefix):
                        self.failures.append(f"{r.status_code} {r.text[:60]!r}")
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                time.sleep(0.05)
