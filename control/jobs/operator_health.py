"""How the platform is doing, for operators (``GET /v1/operator/health``, ``moorage admin
health``): one entry per component, each ``ok``, ``warn`` or ``fail`` with a figure (free
space, a version and answer time, a smoke run's seconds, a queue's depth and wait, the
reconciler's last pass and the drift it repaired, nodes and breakers) and, unless ok, what
to do next.

Heavier than ``/readyz``, which stays cheap for load balancers: this one runs a container
under the sandbox runtime (cached ``health_smoke_cache_s``) and asks Docker for its facts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from control.clock import utcnow
from control.domain.inference import Inference
from control.jobs.environment_pool import PoolStatus
from control.jobs.queue import JobQueue
from control.settings import Settings
from runtime.operator_probes import (
    DockerFacts,
    ProbeFailed,
    disk_free,
    docker_facts,
    sandbox_smoke,
    tcp_connect,
    traefik_ping,
)
from runtime.resilience import BreakerRegistry

if TYPE_CHECKING:
    from control.reconcile.reconciler import PassRecord

Level = Literal["ok", "warn", "fail"]
_ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "fail": 2}
HOST_SETUP = "run `sudo bash deploy/host-setup.sh`"
GiB = 1024**3


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    status: Level
    figure: str  # what was measured, in words with its numbers
    value: float | None = None  # the headline number (free %, seconds, jobs), for graphs and thresholds
    remedy: str = ""  # what to do next, unless ok


@dataclass(frozen=True)
class HealthReport:
    status: Level  # the worst of the components
    checked_at: str
    components: list[ComponentHealth]


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.1f} MiB"


def worst(levels: list[Level]) -> Level:
    return max(levels, key=lambda level: _ORDER[level], default="ok")


class OperatorHealth:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        breakers: BreakerRegistry,
        inference: Inference,
        last_pass: Callable[[], PassRecord | None],
        *,
        pool: Callable[[], PoolStatus] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.breakers = breakers
        self.inference = inference
        self.last_pass = last_pass
        self.pool = pool
        self.started_at = time.time() if started_at is None else started_at
        self._smoke_lock = threading.Lock()
        self._smoke: tuple[float, ComponentHealth] | None = None  # (monotonic time, result)

    def check(self) -> HealthReport:
        s = self.settings
        facts: DockerFacts | ProbeFailed
        try:
            facts = docker_facts(s.docker_url)
        except ProbeFailed as exc:
            facts = exc
        components = [
            self._disk("data_disk", s.data_dir, "the data directory (MOORAGE_DATA_DIR)"),
            self._docker_disk(facts),
            self._docker(facts),
            self._smoke_run(facts),
            self._entrypoints(),
            self._ping(),
            self._queue(),
            self._reconciler(),
            self._nodes(),
            self._environment_pool(),
            self._breakers(),
        ]
        return HealthReport(worst([c.status for c in components]), utcnow().isoformat(), components)

    # -- disks ------------------------------------------------------------------------------
    def _disk(self, name: str, path: Path, what: str) -> ComponentHealth:
        try:
            disk = disk_free(path)
        except ProbeFailed as exc:
            return ComponentHealth(name, "fail", str(exc), remedy=f"check that {path} exists and is readable")
        figure = f"{_size(disk.free_bytes)} free of {_size(disk.total_bytes)} ({disk.free_pct:.1f}%) at {path}"
        level: Level = (
            "fail"
            if disk.free_pct < self.settings.health_disk_fail_pct
            else "warn"
            if disk.free_pct < self.settings.health_disk_warn_pct
            else "ok"
        )
        remedy = "" if level == "ok" else f"free space on {what}: writes there fail once it is full"
        return ComponentHealth(name, level, figure, round(disk.free_pct, 2), remedy)

    def _docker_disk(self, facts: DockerFacts | ProbeFailed) -> ComponentHealth:
        if isinstance(facts, ProbeFailed):
            return ComponentHealth(
                "docker_disk", "warn", "not checked: the Docker engine does not answer", remedy=f"{HOST_SETUP}"
            )
        if not self.settings.docker_url.startswith("unix://"):  # statvfs here would measure this host, not the engine's
            return ComponentHealth(
                "docker_disk",
                "warn",
                f"not measured: the engine is remote ({facts.root_dir} on its host)",
                remedy="check that host's disk (`docker system df` there)",
            )
        health = self._disk("docker_disk", facts.root_dir, "Docker's root (images, build layers, volumes)")
        if health.status != "ok":
            hint = "remove unused images and build cache (`docker image prune`, `docker builder prune`), or grow the disk"
            return ComponentHealth(health.name, health.status, health.figure, health.value, f"{health.remedy}; {hint}")
        return health

    # -- Docker and the sandbox ---------------------------------------------------------------
    def _docker(self, facts: DockerFacts | ProbeFailed) -> ComponentHealth:
        if isinstance(facts, ProbeFailed):
            return ComponentHealth(
                "docker", "fail", str(facts), remedy=f"start dockerd: {HOST_SETUP} (its log: /var/log/moorage/dockerd.log)"
            )
        figure = f"Docker {facts.version} answered in {facts.answer_s * 1000:.0f} ms at {self.settings.docker_url}"
        return ComponentHealth("docker", "ok", figure, round(facts.answer_s, 4))

    def _smoke_run(self, facts: DockerFacts | ProbeFailed) -> ComponentHealth:
        runtime = self.settings.docker_runtime
        if isinstance(facts, ProbeFailed):
            return ComponentHealth(
                "sandbox_smoke",
                "fail",
                f"not run: the Docker engine does not answer ({facts})",
                remedy=f"start dockerd: {HOST_SETUP}",
            )
        with self._smoke_lock:  # one smoke run at a time; the others wait and reuse it
            now = time.monotonic()
            if self._smoke is not None and now - self._smoke[0] < self.settings.health_smoke_cache_s:
                at, cached = self._smoke
                return ComponentHealth(
                    cached.name, cached.status, f"{cached.figure} ({now - at:.0f} s ago)", cached.value, cached.remedy
                )
            try:
                seconds = sandbox_smoke(self.settings.docker_url, runtime, timeout_s=float(self.settings.health_smoke_timeout_s))
                result = ComponentHealth(
                    "sandbox_smoke", "ok", f"a container under {runtime} ran `true` in {seconds:.2f} s", round(seconds, 3)
                )
            except ProbeFailed as exc:
                result = ComponentHealth(
                    "sandbox_smoke", "fail", str(exc), remedy=f"check `docker run --rm --runtime={runtime} ...`: {HOST_SETUP}"
                )
            self._smoke = (time.monotonic(), result)
            return result

    # -- Traefik ------------------------------------------------------------------------------
    def _entrypoint_urls(self) -> list[str]:
        s = self.settings
        urls = [s.traefik_url]
        if s.acme_email or s.tls_cert_resolver or s.tls_cert_file:  # host setup then opens websecure on 443
            urls.append(f"https://{urlsplit(s.traefik_url).hostname or '127.0.0.1'}:443")
        return urls

    def _entrypoints(self) -> ComponentHealth:
        answers, failures = [], []
        for url in self._entrypoint_urls():
            try:
                answers.append(f"{url} in {tcp_connect(url) * 1000:.0f} ms")
            except ProbeFailed as exc:
                failures.append(f"{url}: {exc}")
        if failures:
            return ComponentHealth(
                "traefik_entrypoints",
                "fail",
                "; ".join(failures),
                float(len(failures)),
                f"start Traefik: {HOST_SETUP}; apps are unreachable until it listens",
            )
        return ComponentHealth("traefik_entrypoints", "ok", "accepting: " + ", ".join(answers), 0.0)

    def _ping(self) -> ComponentHealth:
        address = self.settings.traefik_ping_address
        try:
            seconds = traefik_ping(address)
        except ProbeFailed as exc:
            return ComponentHealth(
                "traefik_ping", "fail", str(exc), remedy=f"start Traefik with its ping entrypoint on {address}: {HOST_SETUP}"
            )
        return ComponentHealth("traefik_ping", "ok", f"{address}/ping answered in {seconds * 1000:.0f} ms", round(seconds, 4))

    # -- the control plane's own work ---------------------------------------------------------
    def _queue(self) -> ComponentHealth:
        depth = self.queue.depth()
        waited = depth.oldest_wait_s
        figure = f"{depth.queued} queued, {depth.running} running" + (
            f"; the oldest due has waited {waited:.0f} s" if waited is not None else ""
        )
        if self.settings.job_workers == 0 and depth.queued:
            return ComponentHealth(
                "job_queue", "warn", figure + " (MOORAGE_JOB_WORKERS=0)", float(depth.queued), "run a server with job workers"
            )
        if waited is not None and waited > self.settings.health_queue_warn_s:
            return ComponentHealth(
                "job_queue",
                "warn",
                figure,
                float(depth.queued),
                f"jobs wait longer than {self.settings.health_queue_warn_s} s: workers are busy or stuck "
                "(MOORAGE_JOB_WORKERS, MOORAGE_DEPLOYS_PER_TENANT; the server log names each job)",
            )
        return ComponentHealth("job_queue", "ok", figure, float(depth.queued))

    def _reconciler(self) -> ComponentHealth:
        interval = self.settings.reconcile_interval_s
        if interval <= 0:
            return ComponentHealth(
                "reconciler", "warn", "disabled (MOORAGE_RECONCILE_INTERVAL_S=0)", remedy="set MOORAGE_RECONCILE_INTERVAL_S"
            )
        record, now = self.last_pass(), time.time()
        late = 3 * interval + 30
        if record is None:
            since = now - self.started_at
            level: Level = "fail" if since > late else "ok"
            return ComponentHealth(
                "reconciler",
                level,
                f"no pass yet ({since:.0f} s since start, every {interval} s)",
                None,
                "" if level == "ok" else "the reconciler does not run: the server log says why (reconcile_pass_failed)",
            )
        ago = now - record.at
        report = record.report
        figure = (
            f"last pass {ago:.0f} s ago in {record.duration_s:.2f} s: {len(report.actions)} drift(s) repaired"
            + (f" ({'; '.join(report.actions[:5])})" if report.actions else "")
            + f", {len(report.errors)} error(s)"
            + (f" ({'; '.join(report.errors[:3])})" if report.errors else "")
            + (" (skipped: nothing started yet)" if report.skipped else "")
        )
        if ago > late:
            return ComponentHealth(
                "reconciler", "fail", figure, round(ago, 1), "no pass for 3 intervals: the server log says why"
            )
        if report.errors:
            return ComponentHealth("reconciler", "warn", figure, round(ago, 1), "the errors name what it could not repair")
        return ComponentHealth("reconciler", "ok", figure, round(ago, 1))

    def _nodes(self) -> ComponentHealth:
        nodes = self.inference.nodes.snapshot()
        if not nodes:
            return ComponentHealth("inference_nodes", "ok", "no inference nodes enrolled", 0.0)
        states = [(node.name, self.inference.health(node).status) for node in nodes]
        healthy = sum(1 for _, status in states if status == "healthy")
        others = ", ".join(f"{name} ({status})" for name, status in states if status != "healthy")
        figure = f"{healthy} of {len(states)} node(s) healthy" + (f"; {others}" if others else "")
        if healthy == len(states):
            return ComponentHealth("inference_nodes", "ok", figure, float(healthy))
        level: Level = "fail" if healthy == 0 else "warn"
        return ComponentHealth(
            "inference_nodes", level, figure, float(healthy), "GET /v1/nodes/{node} says why each one is not healthy"
        )

    def _environment_pool(self) -> ComponentHealth:
        pool = self.pool() if self.pool is not None else None
        if pool is None or not pool.sizes:
            return ComponentHealth("environment_pool", "ok", "no warm pool (MOORAGE_ENVIRONMENT_POOL is empty)", 0.0)
        ready = sum(pool.ready.get(image, 0) for image in pool.sizes)
        each = "; ".join(f"{image}: {pool.ready.get(image, 0)} of {size} ready" for image, size in pool.sizes.items())
        figure = f"{each}; {pool.claims} environments served from it, {pool.misses} found it empty"
        if pool.last_failure is not None:
            return ComponentHealth(
                "environment_pool",
                "warn",
                f"{figure}; the last refill failed: {pool.last_failure}",
                float(ready),
                "check that each pooled image exists (deploy/host-setup.sh builds the base images) and Docker answers",
            )
        return ComponentHealth("environment_pool", "ok", figure, float(ready))

    def _breakers(self) -> ComponentHealth:
        snaps = self.breakers.snapshot()
        opened = [f"{b.name} open (retry in {b.retry_after:.0f} s)" for b in snaps if b.state.value == "open"]
        trial = [f"{b.name} half_open" for b in snaps if b.state.value == "half_open"]
        figure = f"{len(snaps)} breaker(s): " + (", ".join([*opened, *trial]) or "all closed")
        if opened:
            return ComponentHealth(
                "breakers",
                "fail",
                figure,
                float(len(opened)),
                "the dependency behind each open breaker is down: see its component",
            )
        if trial:
            return ComponentHealth("breakers", "warn", figure, 0.0, "a trial call decides; nothing to do yet")
        return ComponentHealth("breakers", "ok", figure, 0.0)
