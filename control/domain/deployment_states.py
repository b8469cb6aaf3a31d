"""The deployment state machine: ``queued → building → releasing → running | failed |
cancelled``. A rollback skips ``building``. ``building`` and ``releasing`` may be entered
again when a job is retried after its worker died (the history keeps every entry)."""

from __future__ import annotations

from enum import StrEnum

from control.domain.errors import Conflict


class Status(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    RELEASING = "releasing"
    RUNNING = "running"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED})
_END = {Status.FAILED, Status.CANCELLED}
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.BUILDING, Status.RELEASING, *_END}),
    Status.BUILDING: frozenset({Status.BUILDING, Status.RELEASING, *_END}),
    Status.RELEASING: frozenset({Status.BUILDING, Status.RELEASING, Status.RUNNING, *_END}),
    Status.RUNNING: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class InvalidTransition(Conflict):
    code = "invalid-transition"


def check_transition(current: str, target: str) -> Status:
    to = Status(target)
    if to not in TRANSITIONS[Status(current)]:
        raise InvalidTransition(f"A deployment cannot go from '{current}' to '{target}'.")
    return to
