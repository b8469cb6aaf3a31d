"""The warm pool: environment containers started ahead of time, so creating an environment
from a base image takes one that already runs instead of starting a sandbox.

The operator names how many to keep ready per image (``MOORAGE_ENVIRONMENT_POOL``, e.g.
``moorage/python:3-bookworm=2``); they are made at the default size (CPU and memory). An
environment of a pooled image at that size, with no env vars of its own, claims one
(``Sandboxes.start`` asks ``WarmPool.take`` first); any other environment, or one
that finds the pool empty, starts cold as before. Each claim wakes the refill thread.

The refill thread alone starts pooled containers, one at a time, after counting the ones
there, so the pool never holds more than its size (a claim between the count and the start
only leaves it one short until the next pass). Its pass also removes what should not be
there: a pooled container that stopped, one of an image or size the operator no longer
pools, and more than the size of one image (the operator lowered it). Unclaimed containers
outlive a control-plane restart and serve after it; pooling nothing removes them at start.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import structlog

from control.jobs.runtime_port import AppContainer, EnvironmentRuntime, EnvironmentSpec, PooledEnvironment

log = structlog.get_logger("moorage.environment_pool")


class PoolConfigError(ValueError):
    """``MOORAGE_ENVIRONMENT_POOL`` cannot be read, or names an image environments may not use."""


def parse_pool_sizes(text: str, allowed_images: Collection[str]) -> dict[str, int]:
    """``image=count`` entries, comma-separated, into counts by image."""
    sizes: dict[str, int] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        image, sep, count = entry.rpartition("=")
        image = image.strip()
        if not sep or not image or not count.strip().isdigit():
            raise PoolConfigError(f"MOORAGE_ENVIRONMENT_POOL: {entry!r} is not image=count (e.g. moorage/python:3-bookworm=2)")
        if image not in allowed_images:
            raise PoolConfigError(
                f"MOORAGE_ENVIRONMENT_POOL: {image!r} is not an environment image; pool one of {', '.join(sorted(allowed_images))}"
            )
        sizes[image] = int(count)
    return {image: n for image, n in sizes.items() if n > 0}


@dataclass(frozen=True)
class PoolConfig:
    sizes: Mapping[str, int]  # ready containers to keep, by image
    millicpus: int  # the size pooled containers are made at: environments' default
    memory_mb: int
    refill_s: float = 2.0  # a pass at least this often, and at once after each claim


@dataclass(frozen=True)
class PoolStatus:
    sizes: Mapping[str, int]
    ready: Mapping[str, int]  # unclaimed now, by image
    claims: int  # environments that got a pooled container since this process started
    misses: int  # environments the pool could have served but found it empty
    last_failure: str | None  # the last pass's failed start, if it had one


@dataclass
class PoolReport:
    started: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class WarmPool:
    def __init__(self, runtime: EnvironmentRuntime, config: PoolConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.claims = 0  # environments that got a pooled container
        self.misses = 0  # environments the pool could have served but found it empty
        self.last_failure: str | None = None
        self._ready: dict[str, list[PooledEnvironment]] = {}  # unclaimed, by image, as the last pass saw them
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def serves(self, spec: EnvironmentSpec) -> bool:
        c = self.config
        return not spec.env and c.sizes.get(spec.image, 0) > 0 and (spec.millicpus, spec.memory_mb) == (c.millicpus, c.memory_mb)

    # -- claims ----------------------------------------------------------------------------------
    def take(self, spec: EnvironmentSpec) -> AppContainer | None:
        if not self.serves(spec):
            return None
        try:
            while (pooled := self._pop(spec.image)) is not None:
                claimed = self.runtime.claim_pooled_environment(pooled, spec)
                if claimed is not None:
                    self.claims += 1
                    log.info("environment_pool_claimed", environment_id=spec.environment_id, image=spec.image)
                    return claimed
            self.misses += 1
            return None
        finally:
            self._wake.set()

    def _pop(self, image: str) -> PooledEnvironment | None:
        with self._lock:
            ready = self._ready.get(image) or []
            return ready.pop(0) if ready else None

    def ready(self) -> dict[str, int]:
        """Unclaimed pooled containers by image, as the last pass left them."""
        with self._lock:
            return {image: len(found) for image, found in self._ready.items()}

    def status(self) -> PoolStatus:
        return PoolStatus(dict(self.config.sizes), self.ready(), self.claims, self.misses, self.last_failure)

    # -- refill ----------------------------------------------------------------------------------
    def refill_once(self) -> PoolReport:
        report = PoolReport()
        c = self.config
        keep: dict[str, list[PooledEnvironment]] = {image: [] for image in c.sizes}
        for pooled in self.runtime.pooled_environments():
            wanted = keep.get(pooled.image)
            fits = pooled.running and (pooled.millicpus, pooled.memory_mb) == (c.millicpus, c.memory_mb)
            if wanted is not None and fits and len(wanted) < c.sizes[pooled.image]:
                wanted.append(pooled)
            elif self.runtime.remove(pooled.container_id):
                report.removed.append(pooled.name)
        with self._lock:
            self._ready = {image: list(found) for image, found in keep.items()}
        for image, size in c.sizes.items():
            for _ in range(size - len(keep[image])):
                if self._stop.is_set():
                    return report
                try:
                    pooled = self.runtime.start_pooled_environment(image, c.millicpus, c.memory_mb)
                except Exception as exc:  # noqa: BLE001 (Docker down, an image gone: the next pass tries again)
                    report.failed.append(f"{image}: {type(exc).__name__}: {exc}")
                    log.warning("environment_pool_start_failed", image=image, error=f"{type(exc).__name__}: {exc}")
                    break
                with self._lock:
                    self._ready.setdefault(image, []).append(pooled)
                report.started.append(pooled.name)
        self.last_failure = report.failed[-1] if report.failed else None
        return report

    def start(self) -> None:
        if self._thread is not None or self.config.refill_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="moorage-environment-pool", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refill_once()
            except Exception as exc:  # noqa: BLE001 (Docker down: the next pass tries again)
                log.warning("environment_pool_pass_failed", error=f"{type(exc).__name__}: {exc}")
            if not self.config.sizes:
                return  # nothing pooled: the first pass removed what an earlier setting left
            self._wake.wait(self.config.refill_s)
            self._wake.clear()
