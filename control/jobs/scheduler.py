"""The scheduler: a thread in the control plane that fires whatever schedules are due every
tick (``cron_tick_ms``; 0: nothing fires). Two kinds share it: apps' cron schedules (each
firing is a run, ``control.domain.cron.CronService``) and databases' backup schedules (each
firing is a backup, ``control.domain.backups.BackupService``). Each owns its rules: overlap,
missed firings."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("moorage.cron")


class Schedules(Protocol):
    def fire_due(self) -> Sequence[object]:
        """Fire what is due now; what each firing did."""


class CronScheduler:
    def __init__(self, *schedules: Schedules, interval_s: float, name: str = "moorage-cron") -> None:
        self.schedules = schedules
        self.name = name
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[object]:
        fired: list[object] = []
        for schedules in self.schedules:
            try:
                fired.extend(schedules.fire_due())
            except Exception as exc:  # noqa: BLE001 (the database busy for a moment: the next tick tries again)
                log.warning("cron_tick_failed", schedules=type(schedules).__name__, error=f"{type(exc).__name__}: {exc}")
        return fired

    def start(self) -> None:
        """A firing missed while the process was down is due now: the first tick fires it, once."""
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
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
