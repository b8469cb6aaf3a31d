"""The cron scheduler: a thread in the control plane that fires due schedules every tick
(``cron_tick_ms``; 0: schedules never fire). Each firing is a run, queued like any other
(``control.domain.cron.CronService.fire_due`` holds the rules: overlap, missed firings)."""

from __future__ import annotations

import threading

import structlog

from control.domain.cron import CronService, Firing

log = structlog.get_logger("moorage.cron")


class CronScheduler:
    def __init__(self, cron: CronService, *, interval_s: float) -> None:
        self.cron = cron
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[Firing]:
        try:
            return self.cron.fire_due()
        except Exception as exc:  # noqa: BLE001 (the database busy for a moment: the next tick tries again)
            log.warning("cron_tick_failed", error=f"{type(exc).__name__}: {exc}")
            return []

    def start(self) -> None:
        """A firing missed while the process was down is due now: the first tick fires it, once."""
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="moorage-cron", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval_s)
