"""Build step containers that an interrupted build leaves behind.

The classic builder removes each step's container itself (``forcerm``), unless the build
is cut off: dockerd restarting, or this process killed mid-step, leaves the container
there, unlabelled, so neither the reconciler nor a prune by label finds it. The build
announces each step's container (`` ---> Running in <id>``); the deployment's work dir
keeps a note of them, and what the note lists is removed before the build is tried again
and when the deployment ends.

The announcement arrives in the same stream as the tenant's own RUN output, so a noted id
is only trusted for a container that carries none of moorage's labels and was created
while that build ran: a build cannot get any other container removed this way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import docker.errors
import structlog

from runtime import labels as L
from runtime.containers import Containers

log = structlog.get_logger("moorage.deploy")
STEP_CONTAINER = re.compile(r"^\s*---> Running in ([0-9a-f]{12,64})\s*$")
NOTE = "build-containers"
CLOCK_SLACK_S = 5.0  # dockerd's clock and ours, and a step created just before its line arrives


def noting_step_containers(workdir: Path, on_line: Callable[[str], None]) -> Callable[[str], None]:
    """``on_line``, also writing down each step container the build announces, with the
    time the build started and the time of the announcement."""
    note, started = workdir / NOTE, time.time()

    def line(text: str) -> None:
        if match := STEP_CONTAINER.match(text):
            with note.open("a", encoding="ascii") as f:
                f.write(f"{match.group(1)} {started:.3f} {time.time():.3f}\n")
        on_line(text)

    return line


def remove_leftovers(workdir: Path, containers: Containers) -> list[str]:
    """Remove the noted step containers that still exist; the note goes once all are handled."""
    note = workdir / NOTE
    try:
        entries = [line.split() for line in note.read_text(encoding="ascii").splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    removed = []
    for container_id, started, seen in entries:
        try:
            info = containers.inspect(container_id)
        except docker.errors.NotFound:
            continue  # the build finished that step normally and removed it
        if _is_step_of_that_build(info.labels, info.attrs.get("Created", ""), float(started), float(seen)):
            containers.remove(info.id, force=True)
            removed.append(info.id[:12])
        else:
            log.warning("build_leftover_not_removed", container=info.id[:12], reason="not a step container of this build")
    note.unlink()
    if removed:
        log.info("build_leftovers_removed", containers=removed)
    return removed


def _is_step_of_that_build(labels: dict[str, str], created: str, started: float, seen: float) -> bool:
    if L.MANAGED in labels:
        return False  # an app or database container: never a build step
    try:
        at = datetime.fromisoformat(created).timestamp()  # dockerd: RFC 3339 with nanoseconds and Z
    except ValueError:
        return False
    return started - CLOCK_SLACK_S <= at <= seen + CLOCK_SLACK_S
