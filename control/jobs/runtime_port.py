"""The app runtime port: what the deploy pipeline, its swap and the reconciler ask of the
machinery that builds images, runs app containers and routes traffic to them.

The inner layers depend on this Protocol alone. Two implementations sit beside it:
``runtime_docker.DockerAppRuntime`` (the Docker engine under gVisor, Traefik's file provider)
and ``runtime_fake.InMemoryAppRuntime`` (the port's fake for tests, whose failures are
scripted). Nothing here imports Docker.

Failures a caller acts on have types of their own: the builders' (``runtime.builders``:
``BuildError``, ``BuildTimeout``, ``BuildCancelled``, ``BuilderUnavailable``) and
``RemovalRefused``, ``RunRefused``, and the volumes' (``runtime.volumes``: ``VolumeStorageMissing``,
``VolumeInUse``, ``VolumeHostError``, ``NameHeldByAnother``, all ``VolumeError``). A dependency
that is down raises whatever its client raises; the pipeline tells those apart from the app's
own failures with ``control.jobs.workers.as_outage``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runtime.builders import BuildRequest, BuiltImage
from runtime.healthcheck import HealthResult
from runtime.volumes import docker_name

VOLUME_ARCHIVE_ROOT = "moorage-volume"  # the directory a volume's tar holds its files under


@dataclass(frozen=True)
class VolumeMount:
    """An app volume as its containers mount it."""

    volume_id: str
    mount_path: str  # absolute, normalised, checked by the domain
    enforced: bool  # its size is its filesystem's (ext4 on a loop device), else only measured

    @property
    def docker_name(self) -> str:
        return docker_name(self.volume_id)


@dataclass(frozen=True)
class AppContainer:
    id: str
    name: str
    tenant: str
    app: str
    release: str
    image: str
    status: str  # created | running | exited | ...
    ip: str | None  # its address on the tenant's network, while it has one
    volumes: tuple[str, ...] = ()  # ids of the app volumes it mounts

    @property
    def running(self) -> bool:
        return self.status == "running"

    def address(self) -> str:
        if self.ip is None:
            raise LookupError(f"container {self.name} has no address on its tenant's network")
        return self.ip


@dataclass(frozen=True)
class Route:
    """The app's hostname (made from tenant and app names) sent to its containers (one per
    replica, balanced), which serve ``release``."""

    app_id: str  # keys the route: names are only what its hostname is made of
    tenant: str
    app: str
    ip: str  # the first replica's address
    port: int
    release: str
    more_ips: tuple[str, ...] = ()  # the other replicas'
    health_path: str | None = None  # with several replicas: the router checks each and skips the failing

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, *self.more_ips)

    @classmethod
    def to(
        cls, app_id: str, tenant: str, app: str, containers: Sequence[AppContainer], port: int, release: str, health_path: str
    ) -> Route:
        first, *rest = (c.address() for c in containers)
        return cls(app_id, tenant, app, first, port, release, tuple(rest), health_path if rest else None)


@dataclass(frozen=True)
class TenantImage:
    """An image built for a tenant: tagged ``moorage-apps/<tenant id>/<app>:<deployment id>``."""

    id: str
    tags: tuple[str, ...]
    size: int = 0  # bytes, as the engine counts them (shared layers counted in each image)

    def deployment_ids(self) -> set[str]:
        return {tag.rpartition(":")[2] for tag in self.tags}


@dataclass(frozen=True)
class ContainerUsage:
    """One running container's counters as the engine reports them now: cumulative since the
    container (this incarnation of it) started, so a restart starts them from 0 again."""

    container_id: str
    tenant: str  # the tenant's name (its label)
    role: str  # app | run | database
    started_at: str  # the engine's start time (RFC 3339): tells one incarnation from the next
    cpu_seconds: float
    memory_bytes: int  # in use now, page cache that can be dropped left out
    memory_peak_bytes: int  # the high-water mark of this incarnation; 0 where the engine keeps none
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int


@dataclass(frozen=True)
class BuildLayer:
    """An untagged image a tenant's build left that no other image builds on: a failed or
    stopped build's last committed step, a multi-stage build's earlier stage, the first image
    of a build that was retried. Its untagged parents go with it."""

    id: str
    tenant_id: str  # the build lineage it carries
    created: float  # epoch seconds, the engine's clock


@dataclass(frozen=True)
class RunOutcome:
    """How a one-off command ended: its exit code, or killed (past its timeout, or cancelled)."""

    exit_code: int | None  # None when it was killed
    timed_out: bool = False
    cancelled: bool = False


class RunRefused(RuntimeError):
    """The engine would not start a one-off command (its program is not in the image, say);
    the message is the engine's, for the tenant. No container is left."""


class RemovalRefused(RuntimeError):
    """The engine would not stop or remove a container (already gone, or its removal is
    under way); the message is the engine's status code."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment's container is made from. A base-image environment has no ``env``
    (each exec passes its own), so a container started ahead of time can serve it."""

    environment_id: str
    tenant: str  # the tenant's name: its network and labels
    image: str
    millicpus: int
    memory_mb: int
    env: Mapping[str, str] = field(default_factory=dict)  # from_app with with_app_env only; never logged


@dataclass(frozen=True)
class ExecOutcome:
    """How a command in an environment ended: its exit code, or killed (past its timeout,
    or once ``cancelled()`` said so), or cut off by its container going away."""

    exit_code: int | None  # None when it was killed or cut off
    duration_ms: int
    timed_out: bool = False
    cancelled: bool = False
    gone: bool = False  # the container went away (removed, stopped) while it ran


class ExecRefused(RuntimeError):
    """The engine would not start the command (the container is gone or not running); the
    message is for the tenant."""


class FilesTooLarge(RuntimeError):
    """A download would be larger than its bound."""


@dataclass(frozen=True)
class PooledEnvironment:
    """A container started ahead of time for environments of one image and size (a warm
    pool's), idling on the pool's own network (no egress, no tenant) until one claims it."""

    container_id: str
    name: str
    image: str
    millicpus: int
    memory_mb: int
    running: bool


class EnvironmentRuntime(Protocol):
    """Environments (sandboxes): containers that idle until a command is exec'd into them."""

    def start_environment(self, spec: EnvironmentSpec) -> AppContainer:
        """Start ``spec.image`` sandboxed on the tenant's network (no route, no DNS name) with
        the spec's CPU and memory limits, idling (a long sleep) with ``/workspace`` as its
        working directory, replacing any container of that environment. Returns it running.
        Raises ``ExecRefused`` when the image cannot idle (no ``sleep`` in it, say)."""
        ...

    def exec_in(
        self,
        container_id: str,
        command: Sequence[str],
        *,
        stdin: bytes | None,
        workdir: str | None,
        env: Mapping[str, str],
        timeout: float,
        on_output: Callable[[str, bytes], None],
        cancelled: Callable[[], bool],
    ) -> ExecOutcome:
        """Run ``command`` (an argv, no shell) in the container, passing each chunk it writes
        to ``on_output("stdout" | "stderr", data)`` as it comes. Blocks until it exits; kills
        it and every process it started once ``timeout`` seconds have passed or once
        ``cancelled()`` (asked about twice a second) says so. Concurrent calls on one
        container are fine. Raises ``ExecRefused`` when it cannot start."""
        ...

    def put_files(self, container_id: str, path: str, tar: bytes) -> None:
        """Unpack ``tar`` (uncompressed, already checked: regular files and directories
        only, relative names) into ``path`` in the container, made if missing. ``ExecRefused``
        when the container refuses it (``path`` is a file, say)."""
        ...

    def get_files(self, container_id: str, path: str, max_bytes: int) -> bytes:
        """``path`` (a file or a directory) as a tar.gz; ``FileNotFoundError`` when it is
        not there, ``FilesTooLarge`` past ``max_bytes``."""
        ...

    def owned_environments(self) -> list[AppContainer]:
        """The environment containers this control plane started (``app`` holds the
        environment id); ``remove`` takes one away."""
        ...

    # -- the warm pool ------------------------------------------------------------------
    def start_pooled_environment(self, image: str, millicpus: int, memory_mb: int) -> PooledEnvironment:
        """Start an environment container ahead of time, as ``start_environment`` would (same
        sandbox, limits, idle command and working directory) but for no tenant: on the pool's
        network, which has no egress, under a name of its own."""
        ...

    def pooled_environments(self) -> list[PooledEnvironment]:
        """The pool's containers that no environment has claimed yet (stopped ones too)."""
        ...

    def claim_pooled_environment(self, pooled: PooledEnvironment, spec: EnvironmentSpec) -> AppContainer | None:
        """Make a pooled container ``spec``'s environment: renamed as ``start_environment``
        names it (the claim: None when another caller claimed it first), moved from the
        pool's network onto the tenant's. ``spec.env`` must be empty: a running container's
        env cannot change. Removes the container and raises when the move fails."""
        ...

    def remove(self, container_id: str) -> bool: ...


class AppRuntime(Protocol):
    # -- images ---------------------------------------------------------------------------
    def build_image(self, builder: str, request: BuildRequest) -> BuiltImage:
        """Build ``request.source`` with ``builder`` (``dockerfile`` | ``nixpacks``), passing each
        log line to ``request.on_line`` and stopping (``BuildCancelled``) once
        ``request.cancelled()`` says so. Raises ``BuildError`` (``BuildTimeout`` past
        ``request.timeout``), ``BuilderUnavailable``, or what ``request.prepare_dockerfile`` raises."""
        ...

    def remove_build_leftovers(self, work_dir: Path) -> list[str]:
        """Remove what an interrupted build in ``work_dir`` left running; what it removed."""
        ...

    def owned_build_networks(self) -> dict[str, str]:
        """The networks this control plane made for builds (each build's RUN steps get one,
        removed when the build ends), by name: the deployment each was made for."""
        ...

    def remove_build_network(self, name: str) -> bool:
        """False when it is gone or a container (a cut-off build's step) still uses it."""
        ...

    def image_exists(self, image_id: str) -> bool: ...

    def tenant_images(self, *tenant_ids: str) -> list[TenantImage]:
        """The images built for these tenants (by id: a later tenant of the same name has its own)."""
        ...

    def orphan_images(self, live_tenant_ids: Collection[str]) -> list[TenantImage]:
        """Images this control plane built for tenants that are no longer live (a teardown
        that could not finish: a container still held the image, Docker was down)."""
        ...

    def build_layers(self, *tenant_ids: str) -> list[BuildLayer]:
        """The untagged build layers of these tenants' builds (by the lineage every build step carries)."""
        ...

    def remove_image(self, image_id: str) -> bool:
        """Remove an image that no container uses, with its untagged parents; False when it is
        gone or still in use."""
        ...

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
        """Start ``image`` sandboxed on the tenant's network, replacing any container called
        ``name`` (a retried deployment's, one the reconciler recreated). ``env`` goes in at
        create and is never logged. ``volumes`` are mounted writable at their paths, their
        storage made ready first (an enforced volume's loop device attached again after a
        reboot); ``VolumeStorageMissing`` when one's data is gone. The container returned is
        running and has an address."""
        ...

    def inspect(self, container_id: str) -> AppContainer | None:
        """The container as it is now; None when it is gone."""
        ...

    def restart(self, container_id: str) -> AppContainer:
        """Start a stopped container again (its volumes made ready first, as for ``start_app``)."""
        ...

    def stop(self, container_id: str) -> bool:
        """Stop (in-flight requests get a grace period) and keep the container, to start it
        again or remove it later; False when it was gone."""
        ...

    def log_tail(self, container_id: str, lines: int) -> list[str]: ...

    def wait_healthy(self, container: AppContainer, *, port: int, path: str, timeout: float) -> HealthResult:
        """Poll ``GET path`` on the container's port until it answers 2xx/3xx, the container
        exits, or ``timeout`` passes."""
        ...

    def remove(self, container_id: str) -> bool:
        """Kill and remove at once; False when it was gone already."""
        ...

    def stop_and_remove(self, container_id: str) -> None:
        """Stop (in-flight requests get a grace period), then remove. Raises ``RemovalRefused``."""
        ...

    def owned_apps(self, *, tenant: str | None = None, app: str | None = None) -> list[AppContainer]:
        """The app containers this control plane started (never another installation's)."""
        ...

    def ever_started_anything(self) -> bool:
        """False while this control plane has never started a container: nothing can be
        there to reconcile, so no reason to call the engine."""
        ...

    # -- metering -------------------------------------------------------------------------
    def container_usage(self) -> list[ContainerUsage]:
        """Every running container this control plane started (apps, runs, databases) with its
        counters now; one that goes away while being read is left out."""
        ...

    def database_volume_bytes(self) -> dict[str, int]:
        """Bytes each managed database's data volume holds, by database id."""
        ...

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
        """Run ``command`` (an argv, no shell) in a new container from ``image``, sandboxed on
        the tenant's network like an app but with no route and no DNS name, replacing any
        container called ``name``. ``volumes`` (the app's) are mounted at their paths,
        read-only unless ``volumes_read_only`` is False. Each line it prints (stdout and stderr) goes to
        ``on_output`` as it comes. Blocks until it exits; kills it once ``timeout`` seconds
        have passed (``timed_out``) or once ``cancelled()`` says so (asked about twice a
        second). The container is gone when this returns, however it returns. Raises
        ``RunRefused`` when the engine will not start the command."""
        ...

    def owned_runs(self, *, tenant: str | None = None) -> list[AppContainer]:
        """The run containers this control plane started that are still there; ``remove``
        takes one away."""
        ...

    # -- app volumes ----------------------------------------------------------------------
    def create_volume(self, *, volume_id: str, tenant: str, app: str, size_mb: int, enforced: bool) -> None:
        """Make the volume's storage: with ``enforced``, an ext4 filesystem of ``size_mb`` MiB
        (writes past it fail with ENOSPC), else a plain volume. Nothing is left when it raises."""
        ...

    def remove_volume(self, volume_id: str) -> bool:
        """Remove the volume's storage and its data; False when none was there. ``VolumeInUse``
        while a container, even a stopped one, still has it."""
        ...

    def owned_volumes(self) -> dict[str, float]:
        """Volume id -> when its storage was made (epoch seconds), for every volume this
        control plane made (never another installation's)."""
        ...

    def volume_usage(self, volumes: Sequence[VolumeMount]) -> dict[str, int | None]:
        """Bytes each volume holds; None where it cannot be told now (an enforced volume that
        no container mounts, a volume that is gone)."""
        ...

    def export_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, dest: Path) -> None:
        """Write everything the volume holds to ``dest`` as a tar (its entries under
        ``VOLUME_ARCHIVE_ROOT/``), read through a helper container from ``image`` that is
        created, never started. The caller stops the volume's writers first (a consistent
        copy); ``dest`` is complete or absent when this returns. ``VolumeError`` when the
        volume's storage cannot be read."""
        ...

    def import_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, source: Path) -> None:
        """Unpack a tar ``export_volume`` wrote into the (new, empty) volume, through a helper
        container from ``image`` that is created, never started."""
        ...

    # -- tenant networks ------------------------------------------------------------------
    def owned_networks(self) -> list[str]:
        """Names of the tenants whose network this control plane created."""
        ...

    def remove_network(self, tenant: str) -> bool:
        """Remove the tenant's network if this control plane created it; False when it is gone,
        not ours, or a container still uses it."""
        ...

    # -- routes ---------------------------------------------------------------------------
    def write_route(self, route: Route) -> None:
        """Create or replace the app's route at once: the router sees the old or the new."""
        ...

    def route_is(self, route: Route) -> bool:
        """Whether the app's route is exactly ``route`` now."""
        ...

    def remove_route(self, app_id: str) -> bool: ...

    def owned_routes(self) -> list[str]:
        """App ids of the routes this control plane wrote."""
        ...

    def legacy_routes(self) -> list[str]:
        """Stems (``tenant--app``) of routes written before routes were keyed by app id."""
        ...

    def remove_legacy_route(self, stem: str) -> bool: ...

    def wait_unrouted(self, tenant: str, app: str, timeout: float) -> float | None:
        """Seconds until the router stops sending the app's hostname to any release (after
        ``remove_route``); None when it still did at ``timeout``."""
        ...

    def wait_served(self, route: Route, timeout: float) -> float | None:
        """Seconds until the router answers for the route's hostname with its release; None
        when it did not within ``timeout``."""
        ...
