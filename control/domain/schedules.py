"""Cron syntax as moorage reads it (croniter), in UTC: five fields (minute hour day month
weekday), or six with a leading seconds field, or an alias (``@hourly``, ``@daily``, ...).
App schedules (runs) and database backup schedules both use it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

import structlog
from croniter import CroniterError, croniter

from control.clock import utcnow
from control.domain.errors import Invalid

log = structlog.get_logger("moorage.schedules")
T = TypeVar("T")

SCHEDULE_RULE = (
    "cron syntax in UTC: 5 fields (minute hour day-of-month month day-of-week), 6 with a leading seconds field, "
    "or @hourly/@daily/@weekly/@monthly/@yearly"
)


def parse_schedule(expr: str, field: str = "schedule") -> str:
    """The schedule with its spacing normalised; 422 naming ``field`` when croniter cannot
    read it or it never comes round (``0 0 30 2 *``)."""
    text = " ".join(expr.split())
    if not text or len(text) > 200 or (not text.startswith("@") and len(text.split(" ")) not in (5, 6)):
        problem = "not a schedule"
    else:
        try:
            next_fire(text, utcnow())
            problem = None
        except (CroniterError, ValueError, KeyError, IndexError) as exc:
            problem = str(exc)[:200] or type(exc).__name__
    if problem is not None:
        raise Invalid(
            f"'{field}' must be {SCHEDULE_RULE}; got {expr[:80]!r} ({problem}).",
            errors=[{"field": field, "message": f"must be {SCHEDULE_RULE}"}],
        )
    return text


def next_fire(schedule: str, after: datetime) -> datetime:
    """The first time the schedule comes round strictly after ``after`` (UTC)."""
    with_seconds = not schedule.startswith("@") and len(schedule.split(" ")) == 6
    found: datetime = croniter(schedule, after, second_at_beginning=with_seconds).get_next(datetime)
    return found


def shortest_gap_s(schedule: str, *, after: datetime, firings: int = 6) -> float:
    """The shortest time between consecutive firings among the next few: what an operator's
    floor on how often something may run is checked against."""
    times = [next_fire(schedule, after)]
    for _ in range(firings - 1):
        times.append(next_fire(schedule, times[-1]))
    return min((b - a).total_seconds() for a, b in itertools.pairwise(times))


def fire_each(due: Iterable[str], fire: Callable[[str], T | None], *, failed_event: str) -> list[T]:
    """``fire(id)`` for each due id, each in its own transaction: one that fails is logged and
    tried again at the next tick, and does not hold up the others. What the firings did."""
    fired = []
    for subject_id in due:
        try:
            outcome = fire(subject_id)
        except Exception as exc:  # noqa: BLE001 (the next tick tries again; the others go on)
            log.warning(failed_event, subject_id=subject_id, error=f"{type(exc).__name__}: {exc}")
            continue
        if outcome is not None:
            fired.append(outcome)
    return fired
