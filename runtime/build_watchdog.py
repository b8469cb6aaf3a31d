"""A watchdog beside each build: bounds what it writes to disk and how long it runs.

The classic builder has no disk limit (overlay2's `--storage-opt size` needs xfs with
pquota), so the watchdog measures instead: the writable layer of each running step container
(`SizeRw`) and the volumes it writes to (a RUN after `VOLUME`), the layers this build
committed, and the log it produced (the control plane writes it to disk). Past the quota or
the deadline it kills the running step at once (dockerd fails the step; `forcerm` removes its
container and its writes) and keeps killing any step that starts, so the stream ends within
moments. Found at a commit (a step too fast for a poll), there is nothing to kill: the caller
closes the stream and dockerd cancels the build.

Measuring costs little: every 0.5 s (sooner as the quota nears, later when a measurement is
slow: at most ~5% of the time) one `SizeRw` of the running step, and one image inspect per
commit on the build's own path.

Log lines are the tenant's to forge (a RUN step can print ` ---> Running in <id>`), so what a
line names is never trusted to lower the count or to pick what gets killed: a committed image
counts only the layers the daemon says were created during this build (walking `Parent`), and
a container is measured or killed only if the daemon says it is a step of this build.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import docker
import docker.errors
import structlog

from runtime.volume_usage import volume_bytes

log = structlog.get_logger("moorage.runtime.builds")

STEP = re.compile(r"^Step (\d+/\d+ : .*)$")
RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")
COMMITTED = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
KILL_POLL_S = 0.05  # after an overrun: how soon a step that starts is killed
MEASURE_SHARE = 20  # wait at least this many times what a measurement cost (<= 5% busy)


@dataclass(frozen=True)
class Overrun:
    kind: str  # "disk" | "time"
    written: int  # bytes the build had written when it was stopped
    step: str  # "2/3 : RUN ..." as the builder printed it, "" before the first step


class BuildWatchdog:
    def __init__(
        self, api: docker.APIClient, *, quota_bytes: int, deadline: float, poll_s: float = 0.5, name: str = "build"
    ) -> None:
        self.api, self.quota, self.deadline, self.poll_s = api, quota_bytes, deadline, poll_s
        self.reason: Overrun | None = None
        self.refused: list[str] = []  # images committed at or after the overrun: removed by the caller
        # The overrun was found at a commit: no step is running to kill, so the caller closes
        # the stream (dockerd cancels the build before the next step gets anywhere).
        self.cancel = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._since = 0.0  # daemon clock (epoch s) at the start: what is older is not this build's
        self._log_bytes = 0
        self._layers: dict[str, int] = {}  # image id -> bytes its layer added, this build's only
        self._images: dict[str, dict[str, str]] = {}  # images a step may run from -> their labels
        self._pending: list[str] = []  # container ids log lines named, not yet checked
        self._steps: set[str] = set()  # containers the daemon confirmed as this build's steps
        self._running: dict[str, int] = {}  # their SizeRw (+ volumes) at the last measurement
        self._mountpoints: dict[str, str] = {}
        self._known: dict[str, dict[str, Any]] = {}  # inspected images by id
        self._step = ""
        self._measured_at = time.monotonic()
        self._rate = 0.0  # bytes/s the running steps grew by between the last two measurements
        self._cost = 0.0  # seconds the last measurement took
        self._thread = threading.Thread(target=self._run, name=f"build-watchdog-{name}", daemon=True)

    # -- the build's thread ------------------------------------------------------------------
    def start(self) -> BuildWatchdog:
        self._since = self._daemon_now() - 1.0  # the Date header has whole seconds
        self._thread.start()
        return self

    def observe(self, line: str) -> None:
        """Every log line, in order: it counts toward the log bytes and may name a step."""
        with self._lock:
            self._log_bytes += len(line) + 1
        if m := STEP.match(line):
            self._step = m[1]
        elif m := RUNNING_IN.match(line):
            with self._lock:
                self._pending.append(m[1])
            self._wake.set()
        elif m := COMMITTED.match(line):
            self.committed(m[1])
        self._check()

    def committed(self, ref: str) -> None:
        """Counted as soon as the step commits: a step too fast for a poll is still caught, and
        after an overrun every image committed is refused."""
        image = self._inspect_image(ref)
        if image is None:
            return
        with self._lock:
            self._images[image["Id"]] = _labels(image)
        self._add_layers(image)
        self.cancel = self._check() or self.cancel
        with self._lock:
            if self.reason and image["Id"] not in self.refused:
                self.refused.append(image["Id"])

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def written(self) -> int:
        with self._lock:
            return self._written()

    # -- the watchdog's thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 (dockerd restarting, a container gone mid-call: next tick)
                log.warning("build_watchdog_tick_failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.wait(self._interval())
            self._wake.clear()

    def _tick(self) -> None:
        self._confirm_steps()
        if self.quota:  # 0: no disk quota, only the deadline is watched
            self._measure()
        self._check()
        if self.reason:
            self._kill_steps()

    def _interval(self) -> float:
        if self.reason:
            return KILL_POLL_S
        wait = min(max(self.poll_s, MEASURE_SHARE * self._cost), self.deadline - time.monotonic())
        if self.quota and self._rate > 0:  # nearing the quota fast: look again before it is crossed
            wait = min(wait, (self.quota - self.written()) / self._rate / 2)
        return max(KILL_POLL_S, wait)

    def _confirm_steps(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                ref = self._pending[0]
            try:
                container = self.api.inspect_container(ref)
            except docker.errors.NotFound:
                container = None
            # Any other failure (dockerd restarting) leaves `ref` pending for the next tick.
            with self._lock:
                self._pending.remove(ref)
            if container is None:
                continue
            if self._is_step(container):
                with self._lock:
                    self._steps.add(container["Id"])
            elif (container.get("State") or {}).get("Running"):  # a metadata step (LABEL) never runs
                log.warning("build_log_named_a_foreign_container", container=ref)

    def _is_step(self, container: dict[str, Any]) -> bool:
        """A step of this build: created since it started, from an image it committed (or its
        FROM), labelled only as that image is (moorage's own containers carry more labels)."""
        with self._lock:
            labels = self._images.get(container.get("Image", ""))
        own = dict((container.get("Config") or {}).get("Labels") or {})
        return labels is not None and own == labels and _epoch(container.get("Created", "")) >= self._since

    def _measure(self) -> None:
        with self._lock:
            steps = list(self._steps)
        began = time.monotonic()
        sizes: dict[str, int] = {}
        for cid in steps:
            # An exited step writes no more (its diff is about to be a layer, counted then), and
            # sizing it would race dockerd's commit for the disk: it is dropped, not sized.
            rows = self.api.containers(all=True, size=True, filters={"id": cid, "status": ["created", "running"]})
            if not rows:
                with self._lock:
                    self._steps.discard(cid)
                continue
            sizes[cid] = self._step_bytes(rows[0])
        now = time.monotonic()
        with self._lock:
            before, self._running = self._running, sizes
        # Growth of the same steps only: a step that just started has no rate yet.
        same = before.keys() == sizes.keys() and any(sizes.values())
        self._rate = (sum(sizes.values()) - sum(before.values())) / max(now - self._measured_at, 1e-3) if same else 0.0
        self._measured_at, self._cost = now, now - began

    def _step_bytes(self, row: dict[str, Any]) -> int:
        volumes = [m["Name"] for m in row.get("Mounts") or [] if m.get("Type") == "volume" and m.get("Name")]
        return int(row.get("SizeRw") or 0) + (volume_bytes(self.api, volumes, self._mountpoints) if volumes else 0)

    def _kill_steps(self) -> None:
        with self._lock:
            steps = list(self._steps)
        for cid in steps:
            try:
                self.api.kill(cid)
                log.info("build_step_killed", container=cid[:12], reason=self.reason and self.reason.kind)
            except docker.errors.APIError:  # not running (yet, or any more), or gone
                pass

    # -- shared --------------------------------------------------------------------------------
    def _written(self) -> int:
        return self._log_bytes + sum(self._layers.values()) + sum(self._running.values())

    def _check(self) -> bool:
        """True when this call found the overrun."""
        with self._lock:
            if self.reason:
                return False
            written = self._written()
            if self.quota and written > self.quota:
                self.reason = Overrun("disk", written, self._step)
            elif time.monotonic() >= self.deadline:
                self.reason = Overrun("time", written, self._step)
            else:
                return False
        log.warning("build_overrun", kind=self.reason.kind, written=written, quota=self.quota, step=self._step[:80])
        self._wake.set()
        return True

    def _add_layers(self, image: dict[str, Any] | None) -> None:
        """The layers of `image`'s chain that this build created and that are not counted yet
        (cache hits and the FROM image are older than the build)."""
        while image is not None and _epoch(image.get("Created", "")) >= self._since:
            with self._lock:
                if image["Id"] in self._layers:
                    return
            parent = self._inspect_image(image["Parent"]) if image.get("Parent") else None
            added = int(image.get("Size") or 0) - (int(parent.get("Size") or 0) if parent else 0)
            with self._lock:
                self._layers[image["Id"]] = max(0, added)
            image = parent

    def _inspect_image(self, ref: str) -> dict[str, Any] | None:
        """Images do not change: each is asked for once (a step's parent is the step before)."""
        hexid = ref.removeprefix("sha256:")
        for known, image in self._known.items():
            if known.removeprefix("sha256:").startswith(hexid):
                return image
        try:
            inspected: dict[str, Any] = self.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        self._known[inspected["Id"]] = inspected
        return inspected

    def _daemon_now(self) -> float:
        """The daemon's clock, which stamps containers and images (it may be another host)."""
        try:
            response = self.api._get(self.api._url("/_ping"))  # type: ignore[attr-defined]  # private, so not in the stubs
            return parsedate_to_datetime(response.headers["Date"]).timestamp()
        except Exception:  # noqa: BLE001 (no Date header or no daemon: the build's own call will say so)
            return time.time()


def _labels(image: dict[str, Any]) -> dict[str, str]:
    return dict((image.get("Config") or {}).get("Labels") or {})


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 with nanoseconds (Python takes microseconds); unparsable: 0, so a
    container or image that cannot be dated is never taken for this build's."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    if not match:
        return 0.0
    fraction = (match[2] or ".0")[:7]
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(f"{match[1]}{fraction}{zone}").timestamp()
