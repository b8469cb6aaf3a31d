"""``InMemoryAppRuntime``: the app runtime port's fake, for tests that must not need Docker.

It keeps real state, so a test asserts on outcomes rather than on calls: images built,
app containers (running or exited, each with an address, its env, its log and its mounts),
app volumes (each holding files: ``write_file``/``read_file`` as the app in a container would,
so a test sees what survives which container), routes (app id → container address and
release), legacy route files, and the step containers and build networks an interrupted
build left. An app
listens on ``$PORT``: a health check on another port fails, as it would for real.

One-off runs print the lines and exit with the code that ``script_runs`` set (after its
``duration_s``: ``math.inf`` runs until killed); ``runs`` keeps what each was started with
and how it ended, ``max_parallel_runs`` how many ran at once at most.

Failures are scripted, each in a sentence: ``fail_builds``, ``hang_builds``,
``crash_mid_build``, ``never_healthy``, ``die_after_start``, ``traefik_never_serves``; and
at any step (a port method's name) ``crash_before``/``crash_after`` (``SimulatedCrash``) or
``before``/``after`` (any action, e.g. a cancel arriving then). Injected events fire once,
at the next call of their step.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import posixpath
import tarfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from control.jobs.build import TENANT_IMAGES, tenant_repository
from control.jobs.runtime_fake_environments import FakeEnvironments
from control.jobs.runtime_port import (
    VOLUME_ARCHIVE_ROOT,
    AppContainer,
    AppRuntime,
    BuildLayer,
    ContainerUsage,
    EnvironmentRuntime,
    RemovalRefused,
    Route,
    RunOutcome,
    TenantImage,
    VolumeMount,
)
from runtime.builders import (
    BuildCancelled,
    BuildError,
    BuildRequest,
    BuildTimeout,
    BuiltImage,
)
from runtime.healthcheck import HealthResult
from runtime.volumes import NameHeldByAnother, VolumeInUse, VolumeStorageMissing

STEPS = frozenset(name for name in vars(AppRuntime) if not name.startswith("_"))
BUILDERS = ("dockerfile", "nixpacks")
IMAGE_BYTES = 5 * 2**20  # what every image the fake builds takes


class SimulatedCrash(BaseException):
    """The worker's process dying at this point. Not an ``Exception``, so no ``except
    Exception`` in the code under test can handle it: what would run after a real death does
    not run. (``finally`` blocks still do, where a real death would skip them.)"""


@dataclass
class FakeContainer:
    id: str
    name: str
    tenant: str
    app: str
    release: str
    image: str
    env: dict[str, str]
    ip: str
    status: str = "running"
    health: str = "healthy"  # healthy | never | dies: what its health check will find
    log: list[str] = field(default_factory=list)
    mounts: tuple[VolumeMount, ...] = ()
    started: float = field(default_factory=time.time)  # started again: a new incarnation, counters from 0 (as the engine's)
    meters: dict[str, float] = field(default_factory=dict)  # what ``use`` added: cumulative counters
    files: dict[str, str] = field(default_factory=dict)  # written outside its volumes: gone with it

    def view(self) -> AppContainer:
        return AppContainer(
            id=self.id,
            name=self.name,
            tenant=self.tenant,
            app=self.app,
            release=self.release,
            image=self.image,
            status=self.status,
            ip=self.ip if self.status == "running" else None,
            volumes=tuple(m.volume_id for m in self.mounts),
        )


@dataclass(frozen=True)
class RunScript:
    """What the next runs do: print ``output``, then exit ``exit_code`` after ``duration_s``."""

    output: tuple[str, ...] = ()
    exit_code: int = 0
    duration_s: float = 0.0


@dataclass
class FakeRun:
    """One run as it was started, and how it ended (None while it runs)."""

    name: str
    tenant: str
    app: str
    release: str
    image: str
    env: dict[str, str]
    command: tuple[str, ...]
    started_at: float
    ended_at: float | None = None
    outcome: RunOutcome | None = None
    mounts: tuple[VolumeMount, ...] = ()
    read_only: bool = True


@dataclass
class FakeVolume:
    id: str
    tenant: str
    app: str
    size_mb: int
    enforced: bool
    created: float = field(default_factory=time.time)
    files: dict[str, str] = field(default_factory=dict)  # path inside the volume -> text

    def used(self) -> int:
        return sum(len(text.encode()) for text in self.files.values())


class InMemoryAppRuntime(FakeEnvironments):
    """The app runtime port's fake for tests: in-memory state, scripted failures, no Docker."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}  # image id -> tag
        self.layers: dict[str, BuildLayer] = {}  # untagged build layers (a failed build's steps) by id
        self.containers: dict[str, FakeContainer] = {}  # app containers by id
        self.volumes: dict[str, FakeVolume] = {}  # app volumes by id
        self.routes: dict[str, Route] = {}  # by app id
        self.networks: set[str] = set()  # tenants whose network this control plane created
        self.legacy: set[str] = set()  # stems (tenant--app) of route files from before id keys
        self.step_containers: dict[str, Path] = {}  # build step container id -> the work dir of its build
        self.build_networks: dict[str, str] = {}  # a build's own network -> the deployment it builds
        self.database_volumes: dict[str, int] = {}  # database id -> bytes its volume holds (set by a test)
        self.calls: list[str] = []  # the steps called, in order
        self._before: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)
        self._after: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)
        self._build_failure: str | None = None
        self._builds_hang = False
        self._crash_mid_build = False
        self._health = "healthy"
        self._health_detail = ""
        self._last_words = ""
        self._traefik_serves = True
        self._serial = itertools.count(1)
        self._started_anything = False
        self.run_containers: dict[str, FakeContainer] = {}  # one-off runs going on, by container id
        self.runs: list[FakeRun] = []  # every run started, in order
        self.max_parallel_runs = 0
        self.exported_while_running: list[str] = []  # containers that still ran while their volume was read
        self._run_script = RunScript()
        self._run_lock = threading.Lock()
        self._parallel_runs = 0

    # -- scripting ------------------------------------------------------------------------
    def fail_builds(self, message: str = "The command '/bin/sh -c make' returned a non-zero code: 2") -> None:
        self._build_failure = message

    def builds_succeed(self) -> None:
        self._build_failure = None

    def hang_builds(self) -> None:
        """Builds print and never finish: until cancelled, or past their time limit."""
        self._builds_hang = True

    def crash_mid_build(self) -> None:
        """The next build dies with its first step's container running (a leftover)."""
        self._crash_mid_build = True

    def never_healthy(self, detail: str = "HTTP 503") -> None:
        """Containers started from now on never pass their health check."""
        self._health, self._health_detail = "never", detail

    def die_after_start(self, last_words: str = "Traceback (most recent call last): boom") -> None:
        """Containers started from now on exit during their health check, logging ``last_words``."""
        self._health, self._last_words = "dies", last_words

    def traefik_never_serves(self) -> None:
        self._traefik_serves = False

    def crash_before(self, step: str) -> None:
        self.before(step, _crash(f"crashed before {step}"))

    def crash_after(self, step: str) -> None:
        self.after(step, _crash(f"crashed after {step}"))

    def before(self, step: str, action: Callable[[], None]) -> None:
        self._before[_step(step)].append(action)

    def after(self, step: str, action: Callable[[], None]) -> None:
        self._after[_step(step)].append(action)

    def script_runs(self, *, output: Sequence[str] = (), exit_code: int = 0, duration_s: float = 0.0) -> None:
        """Runs started from now on print ``output``, then exit ``exit_code`` after ``duration_s``."""
        self._run_script = RunScript(tuple(output), exit_code, duration_s)

    def use(self, container_id: str, **amounts: float) -> None:
        """The app in the container uses resources: ``cpu_seconds``, ``net_rx_bytes``, ... add to
        its counters; ``memory_bytes`` sets what it holds now (and raises its peak)."""
        container = self.containers.get(container_id) or self.run_containers[container_id]
        for name, value in amounts.items():
            if name == "memory_bytes":
                container.meters["memory_bytes"] = value
                container.meters["memory_peak_bytes"] = max(value, container.meters.get("memory_peak_bytes", 0))
            else:
                container.meters[name] = container.meters.get(name, 0.0) + value

    def stop_behind_our_back(self, container_id: str) -> None:
        """The container exits, as if killed by someone else."""
        self.containers[container_id].status = "exited"

    # -- what the app in a container does ---------------------------------------------------
    def write_file(self, container_id: str, path: str, text: str) -> None:
        """The app writes ``path``: into the volume mounted there (an enforced one refuses to
        grow past its size with ENOSPC), else into the container's own files."""
        container = self._container(container_id)
        if container.status != "running":
            raise LookupError(f"container {container.name} is not running")
        volume, inner = self._volume_at(container, path)
        if volume is None:
            container.files[path] = text
            return
        if (
            volume.enforced
            and volume.used() - len(volume.files.get(inner, "").encode()) + len(text.encode()) > volume.size_mb * 2**20
        ):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        volume.files[inner] = text

    def read_file(self, container_id: str, path: str) -> str | None:
        container = self._container(container_id)
        volume, inner = self._volume_at(container, path)
        return container.files.get(path) if volume is None else volume.files.get(inner)

    def _volume_at(self, container: FakeContainer, path: str) -> tuple[FakeVolume | None, str]:
        for mount in container.mounts:
            if path.startswith(mount.mount_path.rstrip("/") + "/"):
                return self.volumes[mount.volume_id], posixpath.relpath(path, mount.mount_path)
        return None, path

    # -- reading the state (for assertions) -----------------------------------------------
    def running(self, *, tenant: str | None = None, app: str | None = None) -> list[FakeContainer]:
        return [c for c in self._apps(tenant, app) if c.status == "running"]

    def served_by(self, app_id: str) -> FakeContainer | None:
        """The running container the app's route points at, if any."""
        route = self.routes.get(app_id)
        if route is None:
            return None
        return next((c for c in self.containers.values() if c.ip == route.ip and c.status == "running"), None)

    def serving_all(self, app_id: str) -> list[FakeContainer]:
        """Every running container the app's route balances over."""
        route = self.routes.get(app_id)
        if route is None:
            return []
        return [c for c in self.containers.values() if c.ip in route.ips and c.status == "running"]

    # -- images ---------------------------------------------------------------------------
    def build_image(self, builder: str, request: BuildRequest) -> BuiltImage:
        self._enter("build_image")
        if builder not in BUILDERS:
            raise ValueError(f"unknown builder {builder!r}")
        dockerfile = request.source / "Dockerfile"
        if builder == "dockerfile":
            if not dockerfile.is_file():
                raise BuildError("the source has no Dockerfile at its root; add one or use the nixpacks builder", [])
            if request.prepare_dockerfile is not None:
                request.prepare_dockerfile(dockerfile.read_text(encoding="utf-8"))
        network = f"build-{self._new_id()[:12]}"
        self.build_networks[network] = request.tag.rpartition(":")[2]
        try:
            self._build_line(request, "Step 1/2 : FROM the app's base image")
            step = self._new_id()
            self.step_containers[step] = request.work_dir or request.source.parent
            request.on_line(f" ---> Running in {step[:12]}")
            if self._crash_mid_build:
                self._crash_mid_build = False
                raise SimulatedCrash("crashed during build_image")  # its step container and network stay
            try:
                self._build(request)
            except BuildError:  # the steps it committed before the one that failed stay, untagged
                tenant_id = request.tag.removeprefix(TENANT_IMAGES).partition("/")[0]
                layer = BuildLayer(f"sha256:{hashlib.sha256(f'layer:{step}'.encode()).hexdigest()}", tenant_id, time.time())
                self.layers[layer.id] = layer
                raise
            finally:
                del self.step_containers[step]  # the builder removes its step containers (forcerm)
        except SimulatedCrash:
            raise
        except BaseException:
            del self.build_networks[network]
            raise
        del self.build_networks[network]
        image_id = f"sha256:{hashlib.sha256(f'{request.tag}:{step}'.encode()).hexdigest()}"
        self.images[image_id] = request.tag
        self._leave("build_image")
        return BuiltImage(image_id=image_id, tag=request.tag, builder=builder)

    def _build(self, request: BuildRequest) -> None:
        started = time.monotonic()
        while self._builds_hang:
            if time.monotonic() - started >= request.timeout:
                raise BuildTimeout(f"build of {request.tag} exceeded its time limit of {request.timeout:.0f}s", [])
            self._build_line(request, "still building ...")
            time.sleep(0.01)
        if self._build_failure is not None:
            raise BuildError(f"build of {request.tag} failed: {self._build_failure}", [self._build_failure])
        self._build_line(request, "Step 2/2 : CMD the app")

    @staticmethod
    def _build_line(request: BuildRequest, line: str) -> None:
        request.on_line(line)
        if request.cancelled():  # as the real builders: after each line
            raise BuildCancelled("the build was cancelled")

    def remove_build_leftovers(self, work_dir: Path) -> list[str]:
        self._enter("remove_build_leftovers")
        removed = [step for step, where in self.step_containers.items() if where == work_dir]
        for step in removed:
            del self.step_containers[step]
        self._leave("remove_build_leftovers")
        return [step[:12] for step in removed]

    def owned_build_networks(self) -> dict[str, str]:
        self._enter("owned_build_networks")
        owned = dict(self.build_networks)
        self._leave("owned_build_networks")
        return owned

    def remove_build_network(self, name: str) -> bool:
        self._enter("remove_build_network")
        removed = self.build_networks.pop(name, None) is not None
        self._leave("remove_build_network")
        return removed

    def image_exists(self, image_id: str) -> bool:
        self._enter("image_exists")
        exists = image_id in self.images
        self._leave("image_exists")
        return exists

    def tenant_images(self, *tenant_ids: str) -> list[TenantImage]:
        self._enter("tenant_images")
        prefix = tuple(tenant_repository(tenant_id) for tenant_id in tenant_ids)
        found = [
            TenantImage(image_id, (tag,), IMAGE_BYTES)
            for image_id, tag in self.images.items()
            if prefix and tag.startswith(prefix)
        ]
        self._leave("tenant_images")
        return found

    def orphan_images(self, live_tenant_ids: Collection[str]) -> list[TenantImage]:
        self._enter("orphan_images")
        live = tuple(tenant_repository(tenant_id) for tenant_id in live_tenant_ids)
        found = [
            TenantImage(image_id, (tag,))
            for image_id, tag in self.images.items()
            if tag.startswith(TENANT_IMAGES) and not (live and tag.startswith(live))
        ]
        self._leave("orphan_images")
        return found

    def build_layers(self, *tenant_ids: str) -> list[BuildLayer]:
        self._enter("build_layers")
        found = [layer for layer in self.layers.values() if layer.tenant_id in tenant_ids]
        self._leave("build_layers")
        return found

    def remove_image(self, image_id: str) -> bool:
        self._enter("remove_image")
        in_use = any(c.image == image_id for c in self.containers.values())
        removed = not in_use and (self.images.pop(image_id, None) or self.layers.pop(image_id, None)) is not None
        self._leave("remove_image")
        return removed

    # -- tenant networks ------------------------------------------------------------------
    def owned_networks(self) -> list[str]:
        self._enter("owned_networks")
        owned = sorted(self.networks)
        self._leave("owned_networks")
        return owned

    def remove_network(self, tenant: str) -> bool:
        self._enter("remove_network")
        in_use = any(c.tenant == tenant for c in self.containers.values())
        removed = not in_use and tenant in self.networks
        if removed:
            self.networks.discard(tenant)
        self._leave("remove_network")
        return removed

    # -- app containers -------------------------------------------------------------------
    def start_app(
        self,
        *,
        tenant: str,
        app: str,
        release: str,
        image: str,
        env: dict[str, str],
        name: str,
        volumes: Sequence[VolumeMount] = (),
    ) -> AppContainer:
        self._enter("start_app")
        if image not in self.images:
            raise LookupError(f"no such image: {image}")
        for mount in volumes:
            if mount.volume_id not in self.volumes:
                raise VolumeStorageMissing(f"the storage of volume {mount.volume_id} is gone, so its data is lost")
        self._started_anything = True
        self.networks.add(tenant)
        for same_name in [c.id for c in self.containers.values() if c.name == name]:
            del self.containers[same_name]
        container = FakeContainer(
            id=self._new_id(),
            name=name,
            tenant=tenant,
            app=app,
            release=release,
            image=image,
            env=dict(env),
            ip=self._address(88),
            health=self._health,
            log=[f"{app} {release} listening on port {env.get('PORT', '?')}"],
            mounts=tuple(volumes),
        )
        self.containers[container.id] = container
        self._leave("start_app")
        return container.view()

    def inspect(self, container_id: str) -> AppContainer | None:
        self._enter("inspect")
        found = self.containers.get(container_id)
        self._leave("inspect")
        return found.view() if found else None

    def restart(self, container_id: str) -> AppContainer:
        self._enter("restart")
        container = self._container(container_id)
        container.status, container.ip = "running", self._address(88)  # a restarted container may get another
        container.started, container.meters = max(time.time(), container.started + 1e-6), {}
        self._leave("restart")
        return container.view()

    def stop(self, container_id: str) -> bool:
        self._enter("stop")
        found = self.containers.get(container_id)
        if found is not None:
            found.status = "exited"
        self._leave("stop")
        return found is not None

    def log_tail(self, container_id: str, lines: int) -> list[str]:
        self._enter("log_tail")
        tail = self._container(container_id).log[-lines:] if lines > 0 else []
        self._leave("log_tail")
        return tail

    def wait_healthy(self, container: AppContainer, *, port: int, path: str, timeout: float) -> HealthResult:
        self._enter("wait_healthy")
        result = self._health_of(self.containers.get(container.id), port, timeout)
        self._leave("wait_healthy")
        return result

    def _health_of(self, container: FakeContainer | None, port: int, timeout: float) -> HealthResult:
        if container is None or container.status != "running":
            return HealthResult(False, "the container exited (no answer yet)", 0.0)
        if container.health == "dies":
            container.status = "exited"
            container.log.append(self._last_words)
            return HealthResult(False, "the container exited (ConnectError: connection refused)", 0.0)
        if container.env.get("PORT") != str(port):
            return HealthResult(False, "ConnectError: connection refused", timeout)
        if container.health == "never":
            return HealthResult(False, self._health_detail, timeout)
        return HealthResult(True, "HTTP 200", 0.0)

    def remove(self, container_id: str) -> bool:
        self._enter("remove")
        existed = (
            self.containers.pop(container_id, None)
            or self.run_containers.pop(container_id, None)
            or self.environments.pop(container_id, None)
        ) is not None or self.remove_pooled(container_id)
        self._leave("remove")
        return existed

    def stop_and_remove(self, container_id: str) -> None:
        self._enter("stop_and_remove")
        if self.containers.pop(container_id, None) is None:
            raise RemovalRefused("404")
        self._leave("stop_and_remove")

    def owned_apps(self, *, tenant: str | None = None, app: str | None = None) -> list[AppContainer]:
        self._enter("owned_apps")
        found = [c.view() for c in self._apps(tenant, app)]
        self._leave("owned_apps")
        return found

    def ever_started_anything(self) -> bool:
        self._enter("ever_started_anything")
        started = self._started_anything
        self._leave("ever_started_anything")
        return started

    # -- metering -------------------------------------------------------------------------
    def container_usage(self) -> list[ContainerUsage]:
        self._enter("container_usage")
        running = [(c, "app") for c in self.containers.values()] + [(c, "run") for c in self.run_containers.values()]
        found = [
            ContainerUsage(
                container_id=c.id,
                tenant=c.tenant,
                role=role,
                started_at=datetime.fromtimestamp(c.started, UTC).isoformat().replace("+00:00", "Z"),
                cpu_seconds=c.meters.get("cpu_seconds", 0.0),
                memory_bytes=int(c.meters.get("memory_bytes", 0)),
                memory_peak_bytes=int(c.meters.get("memory_peak_bytes", 0)),
                net_rx_bytes=int(c.meters.get("net_rx_bytes", 0)),
                net_tx_bytes=int(c.meters.get("net_tx_bytes", 0)),
                block_read_bytes=int(c.meters.get("block_read_bytes", 0)),
                block_write_bytes=int(c.meters.get("block_write_bytes", 0)),
            )
            for c, role in running
            if c.status == "running"
        ]
        self._leave("container_usage")
        return found

    def database_volume_bytes(self) -> dict[str, int]:
        self._enter("database_volume_bytes")
        found = dict(self.database_volumes)
        self._leave("database_volume_bytes")
        return found

    # -- one-off runs ---------------------------------------------------------------------
    def run_command(
        self,
        *,
        tenant: str,
        app: str,
        release: str,
        image: str,
        env: dict[str, str],
        command: Sequence[str],
        name: str,
        timeout: float,
        on_output: Callable[[str], None],
        cancelled: Callable[[], bool],
        volumes: Sequence[VolumeMount] = (),
        volumes_read_only: bool = True,
    ) -> RunOutcome:
        self._enter("run_command")
        if image not in self.images:
            raise LookupError(f"no such image: {image}")
        self._started_anything = True
        self.networks.add(tenant)
        for same_name in [c.id for c in self.run_containers.values() if c.name == name]:
            del self.run_containers[same_name]
        container = FakeContainer(
            id=self._new_id(),
            name=name,
            tenant=tenant,
            app=app,
            release=release,
            image=image,
            env=dict(env),
            ip=self._address(89),
            mounts=tuple(volumes),
        )
        self.run_containers[container.id] = container
        record = FakeRun(
            name, tenant, app, release, image, dict(env), tuple(command), time.monotonic(),
            mounts=tuple(volumes), read_only=volumes_read_only,
        )  # fmt: skip
        self.runs.append(record)
        with self._run_lock:
            self._parallel_runs += 1
            self.max_parallel_runs = max(self.max_parallel_runs, self._parallel_runs)
        try:
            record.outcome = self._run(self._run_script, timeout, on_output, cancelled)
        finally:
            with self._run_lock:
                self._parallel_runs -= 1
            self.run_containers.pop(container.id, None)  # gone however the run ends
            record.ended_at = time.monotonic()
        self._leave("run_command")
        return record.outcome

    @staticmethod
    def _run(script: RunScript, timeout: float, on_output: Callable[[str], None], cancelled: Callable[[], bool]) -> RunOutcome:
        started = time.monotonic()
        for line in script.output:
            on_output(line)
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= script.duration_s:
                return RunOutcome(script.exit_code)
            if elapsed >= timeout:
                return RunOutcome(None, timed_out=True)
            if cancelled():
                return RunOutcome(None, cancelled=True)
            time.sleep(0.01)

    def owned_runs(self, *, tenant: str | None = None) -> list[AppContainer]:
        self._enter("owned_runs")
        found = [c.view() for c in list(self.run_containers.values()) if tenant is None or c.tenant == tenant]
        self._leave("owned_runs")
        return found

    # -- app volumes ----------------------------------------------------------------------
    def create_volume(self, *, volume_id: str, tenant: str, app: str, size_mb: int, enforced: bool) -> None:
        self._enter("create_volume")
        if volume_id in self.volumes:
            raise NameHeldByAnother(f"a volume named for {volume_id} exists already; it was left alone")
        self._started_anything = True
        self.volumes[volume_id] = FakeVolume(volume_id, tenant, app, size_mb, enforced)
        self._leave("create_volume")

    def remove_volume(self, volume_id: str) -> bool:
        self._enter("remove_volume")
        users = [c.name for c in self.containers.values() if any(m.volume_id == volume_id for m in c.mounts)]
        if users and volume_id in self.volumes:
            raise VolumeInUse(f"container(s) {users} still use volume {volume_id}; remove them first")
        removed = self.volumes.pop(volume_id, None) is not None
        self._leave("remove_volume")
        return removed

    def owned_volumes(self) -> dict[str, float]:
        self._enter("owned_volumes")
        owned = {v.id: v.created for v in self.volumes.values()}
        self._leave("owned_volumes")
        return owned

    def volume_usage(self, volumes: Sequence[VolumeMount]) -> dict[str, int | None]:
        self._enter("volume_usage")
        usage = {m.volume_id: (v.used() if (v := self.volumes.get(m.volume_id)) else None) for m in volumes}
        self._leave("volume_usage")
        return usage

    def export_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, dest: Path) -> None:
        self._enter("export_volume")
        found = self.volumes.get(volume.volume_id)
        if found is None:
            raise VolumeStorageMissing(f"the storage of volume {volume.volume_id} is gone, so its data is lost")
        writers = [
            c.name
            for c in self.containers.values()
            if c.status == "running" and any(m.volume_id == volume.volume_id for m in c.mounts)
        ]
        self.exported_while_running.extend(writers)
        partial = dest.with_name(dest.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            tar.addfile(_dir_entry(VOLUME_ARCHIVE_ROOT))
            for inner, text in sorted(found.files.items()):
                data = text.encode()
                entry = tarfile.TarInfo(f"{VOLUME_ARCHIVE_ROOT}/{inner}")
                entry.size, entry.mode = len(data), 0o644
                tar.addfile(entry, io.BytesIO(data))
        partial.replace(dest)
        self._leave("export_volume")

    def import_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, source: Path) -> None:
        self._enter("import_volume")
        found = self.volumes.get(volume.volume_id)
        if found is None:
            raise VolumeStorageMissing(f"the storage of volume {volume.volume_id} is gone")
        with tarfile.open(source, "r") as tar:
            for entry in tar.getmembers():
                inner = posixpath.relpath(entry.name, VOLUME_ARCHIVE_ROOT)
                if entry.isfile() and not inner.startswith(".."):
                    extracted = tar.extractfile(entry)
                    assert extracted is not None
                    found.files[inner] = extracted.read().decode()
        self._leave("import_volume")

    # -- routes ---------------------------------------------------------------------------
    def write_route(self, route: Route) -> None:
        self._enter("write_route")
        self.routes[route.app_id] = route
        self.legacy.discard(f"{route.tenant}--{route.app}")  # the id-keyed route replaces it
        self._started_anything = True
        self._leave("write_route")

    def route_is(self, route: Route) -> bool:
        self._enter("route_is")
        same = self.routes.get(route.app_id) == route and f"{route.tenant}--{route.app}" not in self.legacy
        self._leave("route_is")
        return same

    def remove_route(self, app_id: str) -> bool:
        self._enter("remove_route")
        existed = self.routes.pop(app_id, None) is not None
        self._leave("remove_route")
        return existed

    def owned_routes(self) -> list[str]:
        self._enter("owned_routes")
        owned = sorted(self.routes)
        self._leave("owned_routes")
        return owned

    def legacy_routes(self) -> list[str]:
        self._enter("legacy_routes")
        stems = sorted(self.legacy)
        self._leave("legacy_routes")
        return stems

    def remove_legacy_route(self, stem: str) -> bool:
        self._enter("remove_legacy_route")
        existed = stem in self.legacy
        self.legacy.discard(stem)
        self._leave("remove_legacy_route")
        return existed

    def wait_unrouted(self, tenant: str, app: str, timeout: float) -> float | None:
        self._enter("wait_unrouted")
        routed = any((r.tenant, r.app) == (tenant, app) for r in self.routes.values())
        self._leave("wait_unrouted")
        return None if routed else 0.0

    def wait_served(self, route: Route, timeout: float) -> float | None:
        self._enter("wait_served")
        served = self._traefik_serves and self.routes.get(route.app_id) == route
        self._leave("wait_served")
        return 0.0 if served else None

    # -- helpers --------------------------------------------------------------------------
    def _enter(self, step: str) -> None:
        self.calls.append(step)
        _fire(self._before, step)

    def _leave(self, step: str) -> None:
        _fire(self._after, step)

    def _apps(self, tenant: str | None, app: str | None) -> list[FakeContainer]:
        return [c for c in self.containers.values() if (tenant is None or c.tenant == tenant) and (app is None or c.app == app)]

    def _address(self, subnet: int) -> str:
        """A fresh address: 10.88.x.y for app containers, 10.89.x.y for runs."""
        serial = next(self._serial)
        return f"10.{subnet}.{serial // 250}.{serial % 250 + 2}"

    def _container(self, container_id: str) -> FakeContainer:
        found = self.containers.get(container_id)
        if found is None:
            raise LookupError(f"no such container: {container_id}")
        return found

    def _new_id(self) -> str:
        return hashlib.sha256(f"fake-{next(self._serial)}".encode()).hexdigest()


def _dir_entry(name: str) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode = tarfile.DIRTYPE, 0o755
    return entry


def _step(step: str) -> str:
    if step not in STEPS:  # a typo would script nothing, and the test would pass for nothing
        raise ValueError(f"{step!r} is not a step of the app runtime port: {sorted(STEPS)}")
    return step


def _fire(actions: defaultdict[str, list[Callable[[], None]]], step: str) -> None:
    pending, actions[step] = actions[step], []
    for action in pending:
        action()


def _crash(what: str) -> Callable[[], None]:
    def crash() -> None:
        raise SimulatedCrash(what)

    return crash


if TYPE_CHECKING:  # mypy checks here that the fake has every method of the port, typed alike
    _conforms: AppRuntime = InMemoryAppRuntime()
    _conforms_environments: EnvironmentRuntime = InMemoryAppRuntime()
