"""The app runtime port (``control.jobs.runtime_port``) on the Docker engine, gVisor and
Traefik's file provider. The adapters are made on first use, so building the control plane
(and its unit tests) needs no Docker.

Ownership: every app container also carries ``INSTANCE_LABEL`` = this control plane's
instance id (a file in the data dir). The reconciler only ever removes containers with the
moorage labels *and* our instance id: never another installation's, never a test's.

Build step containers: the classic builder removes each step's container itself
(``forcerm``), unless the build is cut off: dockerd restarting, or this process killed
mid-step, leaves the container there, unlabelled, so neither the reconciler nor a prune by
label finds it. The build announces each step's container (`` ---> Running in <id>``); the
deployment's work dir keeps a note of them, and what the note lists is removed before the
build is tried again and when the deployment ends. The announcement arrives in the same
stream as the tenant's own RUN output, so a noted id is only trusted for a container that
carries none of moorage's labels and was created while that build ran: a build cannot get
any other container removed this way.

Build networks: each build's RUN steps run on a network of their own, made just before the
build and removed right after it (``BuildNetworks``), labelled with the image tag it builds
(which ends in the deployment id). One the process could not remove (killed mid-build, a
step container still attached) is the reconciler's to sweep once its deployment is over.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import cached_property
from pathlib import Path

import docker.errors
import structlog

from control.domain.build_policy import LINEAGE_LABEL
from control.jobs import docker_environments
from control.jobs.build import TENANT_IMAGES, tenant_repository
from control.jobs.docker_environment_pool import DockerPool, claimed_label, environment_container, environment_role, run_idling
from control.jobs.docker_runs import run_in_container
from control.jobs.environment_names import ENVIRONMENT_ROLE, POOL_ROLE, environment_container_name, environment_label
from control.jobs.runtime_metering import container_usage, database_volume_bytes
from control.jobs.runtime_port import (
    VOLUME_ARCHIVE_ROOT,
    AppContainer,
    BuildLayer,
    ContainerUsage,
    EnvironmentSpec,
    ExecOutcome,
    PooledEnvironment,
    RemovalRefused,
    Route,
    RunOutcome,
    TenantImage,
    VolumeMount,
)
from control.settings import Settings
from runtime import labels as L
from runtime.builders import Builder, BuildRequest, BuiltImage
from runtime.builders.dockerfile import DockerfileBuilder
from runtime.builders.nixpacks import NixpacksBuilder
from runtime.ca_bundle import write_combined
from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.healthcheck import HealthResult, wait_header, wait_header_gone, wait_healthy
from runtime.images import Images
from runtime.networks import BuildNetworks, TenantNetworks
from runtime.resilience import BreakerRegistry, CircuitBreaker, Guard, RetryPolicy
from runtime.router import AppRoute, Backend, Router, atomic_write
from runtime.sandbox import ContainerSpec, Mount, SandboxPolicy
from runtime.settings import RuntimeSettings
from runtime.volume_archive import read_archive, write_archive
from runtime.volumes import LoopImages, Volumes, VolumeSpec, volume_id_of

log = structlog.get_logger("moorage.deploy")
INSTANCE_LABEL = "org.moorage.control-plane"
RELEASE_HEADER = "X-Moorage-Release"
STEP_CONTAINER = re.compile(r"^\s*---> Running in ([0-9a-f]{12,64})\s*$")
STEP_CONTAINERS_NOTE = "build-containers"
CLOCK_SLACK_S = 5.0  # dockerd's clock and ours, and a step created just before its line arrives
VOLUME_COPY_ROLE = "volume-copy"  # a snapshot's helper: created to read or fill a volume, never started
RUN_ROLE = "run"  # the role label of one-off run containers (apps' is "app": the reconciler keeps those)


def runtime_settings(settings: Settings) -> RuntimeSettings:
    defaults = RuntimeSettings()
    return RuntimeSettings(
        docker_url=settings.docker_url,
        # Each app container's Docker limits: the tenant's compute quotas count these same numbers.
        default_limits=replace(
            defaults.default_limits,
            memory_bytes=settings.container_memory_mb * 1024 * 1024,
            nano_cpus=round(settings.container_cpus * 1_000_000_000),
        ),
        sandbox_runtime=settings.docker_runtime,
        runtime_allowlist=defaults.runtime_allowlist | {settings.docker_runtime},
        traefik_dynamic_dir=settings.traefik_dynamic_dir,
        base_domain=settings.base_domain,
        build_timeout=float(settings.build_timeout_s),
        build_memory_bytes=settings.build_memory_bytes,
        build_disk_bytes=settings.build_disk_bytes,
        ca_bundle=settings.ca_bundle_file,
        tls_cert_resolver=settings.tls_cert_resolver or None,
        tls_wildcard=bool(settings.tls_cert_file),
    )


def instance_id(data_dir: Path) -> str:
    path = data_dir / "instance-id"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(f"mrg-{secrets.token_hex(8)}\n")
    return path.read_text().strip()


class DockerAppRuntime:
    def __init__(self, settings: Settings, breakers: BreakerRegistry) -> None:
        self.settings = settings
        self.rt = runtime_settings(settings)
        if self.rt.ca_bundle is not None:  # rewritten at each start: the operator's file may have changed
            write_combined(Path(settings.build_ca_bundle), self.rt.ca_bundle)
        self.breakers = breakers
        self._instance_lock = threading.Lock()

    # Breakers register (and so appear in /readyz and /metrics) on first use, like the adapters.
    @cached_property
    def docker_guard(self) -> Guard:
        breaker = CircuitBreaker(
            "docker",
            failure_threshold=self.rt.breaker_failure_threshold,
            reset_timeout=self.rt.breaker_reset_timeout,
            registry=self.breakers,
        )
        return Guard(breaker, RetryPolicy())

    @cached_property
    def router(self) -> Router:
        return Router(self.rt, registry=self.breakers)

    @cached_property
    def engine(self) -> DockerEngine:
        return DockerEngine(self.rt, guard=self.docker_guard)

    @cached_property
    def containers(self) -> Containers:
        return Containers(self.engine)

    @cached_property
    def networks(self) -> TenantNetworks:
        return TenantNetworks(self.engine, owner_labels=lambda: {INSTANCE_LABEL: self.instance})

    @cached_property
    def build_networks(self) -> BuildNetworks:
        return BuildNetworks(self.engine, owner_labels=lambda: {INSTANCE_LABEL: self.instance})

    @cached_property
    def volumes(self) -> Volumes:
        loops = LoopImages(self.settings.data_dir / "volumes", timeout=float(self.settings.volume_command_timeout_s))
        return Volumes(self.engine, loops)

    @cached_property
    def build_images(self) -> Images:
        # Its own client: the build stream's socket may stay silent for a whole RUN step, so its
        # read timeout is the build's time limit, not the API timeout. Same breaker.
        rt = replace(self.rt, docker_timeout=self.rt.build_timeout + 30)
        return Images(DockerEngine(rt, guard=self.docker_guard))

    @cached_property
    def images(self) -> Images:
        return Images(self.engine)

    @property
    def instance(self) -> str:
        with self._instance_lock:
            return instance_id(self.settings.data_dir)

    @property
    def policy(self) -> SandboxPolicy:
        # A non-sandboxing runtime (runc) is the operator's explicit choice in settings.
        return SandboxPolicy(allow_unsandboxed=self.settings.docker_runtime not in self.rt.sandboxed_runtimes)

    # -- images ---------------------------------------------------------------------------
    def build_image(self, builder: str, request: BuildRequest) -> BuiltImage:
        builders: dict[str, Callable[[], Builder]] = {
            "dockerfile": lambda: DockerfileBuilder(self.build_images, self.rt.ca_bundle),
            "nixpacks": lambda: NixpacksBuilder(self.build_images, self.settings.nixpacks_bin, self.rt.ca_bundle),
        }
        if builder not in builders:
            raise ValueError(f"unknown builder {builder!r}")
        if request.work_dir is not None:
            request = replace(request, on_line=noting_step_containers(request.work_dir, request.on_line))
        # Marked as this control plane's: once its tenant is gone, only the mark says whose it was.
        request = replace(request, labels={**request.labels, INSTANCE_LABEL: self.instance})
        network = self.build_networks.create(request.tenant, build=request.tag)
        try:
            return builders[builder]().build(replace(request, network=network))
        finally:
            # Refused while a cut-off step's container is still attached: swept later.
            with contextlib.suppress(docker.errors.APIError):
                self.build_networks.remove(network)

    def owned_build_networks(self) -> dict[str, str]:
        return {net.name: net.build.rpartition(":")[2] for net in self.build_networks.labelled(INSTANCE_LABEL, self.instance)}

    def remove_build_network(self, name: str) -> bool:
        return self.build_networks.remove(name)

    def remove_build_leftovers(self, work_dir: Path) -> list[str]:
        return remove_leftovers(work_dir, self.containers)

    def image_exists(self, image_id: str) -> bool:
        return self.images.exists(image_id)

    def tenant_images(self, *tenant_ids: str) -> list[TenantImage]:
        prefix = tuple(tenant_repository(tenant_id) for tenant_id in tenant_ids)
        found: list[TenantImage] = []
        if not prefix:
            return found
        for image in self.images.list_managed(role="image"):
            tags = tuple(tag for tag in image.tags if tag.startswith(prefix))
            if tags:
                found.append(TenantImage(image.id, tags, image.size))
        return found

    def orphan_images(self, live_tenant_ids: Collection[str]) -> list[TenantImage]:
        instance, live = self.instance, tuple(tenant_repository(tenant_id) for tenant_id in live_tenant_ids)
        found = []
        for image in self.images.list_managed(role="image"):
            tagged = tuple(tag for tag in image.tags if tag.startswith(TENANT_IMAGES))
            # Only what carries our mark (another control plane's, or one built before images
            # carried it, is never touched), and only when none of its tags is a live tenant's.
            if image.labels.get(INSTANCE_LABEL) == instance and tagged and not any(t.startswith(live) for t in tagged):
                found.append(TenantImage(image.id, tagged))
        return found

    def build_layers(self, *tenant_ids: str) -> list[BuildLayer]:
        wanted = set(tenant_ids)
        if not wanted:
            return []
        return [
            BuildLayer(image.id, lineage, float(image.created or 0))
            for image in self.images.list_dangling(LINEAGE_LABEL)
            if (lineage := image.labels.get(LINEAGE_LABEL, "")) in wanted
        ]

    def remove_image(self, image_id: str) -> bool:
        try:
            return self.images.remove(image_id)
        except docker.errors.APIError as exc:  # 409: a container uses it (one created meanwhile, say)
            if exc.status_code == 409:
                return False
            raise

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
        network = self.networks.ensure(tenant).name
        self.containers.remove(name, force=True)  # first: it may hold a volume the new one mounts
        # Named volumes only, writable at their paths; the rest of the hardening is the sandbox's as for any app.
        mounts = tuple(Mount(self.volumes.prepare(self._volume_spec(v, tenant, app)), v.mount_path) for v in volumes)
        spec = ContainerSpec(
            tenant=tenant,
            app=app,
            image=image,
            network=network,
            release=release,
            name=name,
            env=env,
            mounts=mounts,
            labels={INSTANCE_LABEL: self.instance},
        )
        info = self.containers.run(spec, self.policy)
        info.ip_on(network)  # no address on the tenant's network: nothing could route to it
        return self._app_container(info)

    def inspect(self, container_id: str) -> AppContainer | None:
        try:
            return self._app_container(self.containers.inspect(container_id))
        except docker.errors.NotFound:
            return None

    def restart(self, container_id: str) -> AppContainer:
        for name in self._mounted_volumes(self.containers.inspect(container_id)):
            self.volumes.prepare_existing(name)  # a reboot detached its loop device
        return self._app_container(self.containers.start(container_id))

    def stop(self, container_id: str) -> bool:
        try:
            self.containers.stop(container_id, timeout=10)
        except docker.errors.NotFound:
            return False
        return True

    def log_tail(self, container_id: str, lines: int) -> list[str]:
        return self.containers.logs(container_id, tail=lines)

    def wait_healthy(self, container: AppContainer, *, port: int, path: str, timeout: float) -> HealthResult:
        def alive() -> bool:
            now = self.inspect(container.id)
            return now is not None and now.running

        return wait_healthy(f"http://{container.address()}:{port}{path}", timeout=timeout, alive=alive)

    def remove(self, container_id: str) -> bool:
        return self.containers.remove(container_id, force=True)

    def stop_and_remove(self, container_id: str) -> None:
        try:
            self.containers.stop(container_id, timeout=10)
            self.containers.remove(container_id, force=True)
        except docker.errors.APIError as exc:
            raise RemovalRefused(str(exc.status_code)) from exc

    def owned_apps(self, *, tenant: str | None = None, app: str | None = None) -> list[AppContainer]:
        labels = {name: value for name, value in (("tenant", tenant), ("app", app)) if value is not None}
        instance = self.instance
        found = self.containers.find(role="app", **labels)
        return [self._app_container(c) for c in found if c.labels.get(INSTANCE_LABEL) == instance]

    def ever_started_anything(self) -> bool:
        return (self.settings.data_dir / "instance-id").exists()

    # -- metering -------------------------------------------------------------------------
    def container_usage(self) -> list[ContainerUsage]:
        return container_usage(self.containers, INSTANCE_LABEL, self.instance, self.environment_pool)

    def database_volume_bytes(self) -> dict[str, int]:
        return database_volume_bytes(self.engine, INSTANCE_LABEL, self.instance, self._database_mountpoints)

    @cached_property
    def _database_mountpoints(self) -> dict[str, str]:
        return {}

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
        network = self.networks.ensure(tenant).name
        mounts = tuple(
            Mount(self.volumes.prepare(self._volume_spec(v, tenant, app)), v.mount_path, read_only=volumes_read_only)
            for v in volumes
        )
        spec = ContainerSpec(
            tenant=tenant,
            app=app,
            image=image,
            network=network,
            release=release,
            role=RUN_ROLE,
            name=name,
            command=list(command),
            env=env,
            labels={INSTANCE_LABEL: self.instance},
            app_alias=False,
            mounts=mounts,
        )
        return run_in_container(self.containers, spec, self.policy, timeout=timeout, on_output=on_output, cancelled=cancelled)

    def owned_runs(self, *, tenant: str | None = None) -> list[AppContainer]:
        labels = {} if tenant is None else {"tenant": tenant}
        instance = self.instance
        found = self.containers.find(role=RUN_ROLE, **labels)
        return [self._app_container(c) for c in found if c.labels.get(INSTANCE_LABEL) == instance]

    # -- environments (sandboxes) ---------------------------------------------------------
    def start_environment(self, spec: EnvironmentSpec) -> AppContainer:
        network = self.networks.ensure(spec.tenant).name
        name = environment_container_name(spec.environment_id)
        self.containers.remove(name, force=True)  # a retried create's leftover
        container, policy = environment_container(
            tenant=spec.tenant,
            app=environment_label(spec.environment_id),
            name=name,
            image=spec.image,
            network=network,
            role=ENVIRONMENT_ROLE,
            millicpus=spec.millicpus,
            memory_mb=spec.memory_mb,
            pids=self.settings.environment_pids,
            env=dict(spec.env),
            instance_labels={INSTANCE_LABEL: self.instance},
            policy=self.policy,
            rt=self.rt,
        )
        return self._app_container(run_idling(self.containers, container, policy))

    @cached_property
    def environment_pool(self) -> DockerPool:
        return DockerPool(
            self.containers,
            self.networks,
            instance_labels=lambda: {INSTANCE_LABEL: self.instance},
            policy=lambda: self.policy,
            rt=self.rt,
            pids=self.settings.environment_pids,
        )

    def start_pooled_environment(self, image: str, millicpus: int, memory_mb: int) -> PooledEnvironment:
        return self.environment_pool.start(image, millicpus, memory_mb)

    def pooled_environments(self) -> list[PooledEnvironment]:
        if not self.ever_started_anything():
            return []  # no instance id yet: nothing of ours can be there (and no reason to call the engine)
        return self.environment_pool.idle()

    def claim_pooled_environment(self, pooled: PooledEnvironment, spec: EnvironmentSpec) -> AppContainer | None:
        claimed = self.environment_pool.claim(pooled, spec)
        return None if claimed is None else self._app_container(claimed)

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
        return docker_environments.exec_in_container(
            self.containers,
            container_id,
            command,
            stdin=stdin,
            workdir=workdir,
            env=env,
            timeout=timeout,
            on_output=on_output,
            cancelled=cancelled,
        )

    def put_files(self, container_id: str, path: str, tar: bytes) -> None:
        docker_environments.put_files(self.containers, container_id, path, tar)

    def get_files(self, container_id: str, path: str, max_bytes: int) -> bytes:
        return docker_environments.get_files(self.containers, container_id, path, max_bytes)

    def owned_environments(self) -> list[AppContainer]:
        instance = self.instance
        found = self.containers.find(role=ENVIRONMENT_ROLE)
        made = [self._app_container(c) for c in found if c.labels.get(INSTANCE_LABEL) == instance]
        return made + [self._app_container(c) for c in self.environment_pool.claimed()]

    def _app_container(self, info: ContainerInfo) -> AppContainer:
        if info.labels.get(L.ROLE) == POOL_ROLE and environment_role(info):
            info = replace(
                info, labels=info.labels | {L.TENANT: self.environment_pool.tenant_of(info), L.APP: claimed_label(info)}
            )
        tenant = info.labels.get(L.TENANT, "")
        ip = info.ip_addresses.get(self.networks.name_for(tenant)) if L.is_dns_label(tenant) else None
        volumes = tuple(vid for name in self._mounted_volumes(info) if (vid := volume_id_of(name)))
        return AppContainer(
            id=info.id,
            name=info.name,
            tenant=tenant,
            app=info.labels.get(L.APP, ""),
            release=info.labels.get(L.RELEASE, ""),
            image=info.image,
            status=info.status,
            ip=ip,
            volumes=volumes,
        )

    @staticmethod
    def _mounted_volumes(info: ContainerInfo) -> list[str]:
        return [str(m.get("Name", "")) for m in info.attrs.get("Mounts") or [] if m.get("Type") == "volume"]

    # -- app volumes ----------------------------------------------------------------------
    def _volume_spec(self, mount: VolumeMount, tenant: str, app: str, size_mb: int = 0) -> VolumeSpec:
        return VolumeSpec(mount.volume_id, tenant, app, size_mb, mount.enforced, labels={INSTANCE_LABEL: self.instance})

    def create_volume(self, *, volume_id: str, tenant: str, app: str, size_mb: int, enforced: bool) -> None:
        self.volumes.create(VolumeSpec(volume_id, tenant, app, size_mb, enforced, labels={INSTANCE_LABEL: self.instance}))

    def remove_volume(self, volume_id: str) -> bool:
        return self.volumes.remove(volume_id)

    def owned_volumes(self) -> dict[str, float]:
        return self.volumes.owned({INSTANCE_LABEL: self.instance})

    def volume_usage(self, volumes: Sequence[VolumeMount]) -> dict[str, int | None]:
        return self.volumes.used_bytes({v.volume_id: v.enforced for v in volumes})

    def export_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, dest: Path) -> None:
        with self._volume_helper(volume, tenant, app, image) as helper:
            write_archive(self.engine, helper, f"/{VOLUME_ARCHIVE_ROOT}", dest)

    def import_volume(self, *, volume: VolumeMount, tenant: str, app: str, image: str, source: Path) -> None:
        with self._volume_helper(volume, tenant, app, image) as helper:
            read_archive(self.engine, helper, "/", source)

    @contextlib.contextmanager
    def _volume_helper(self, volume: VolumeMount, tenant: str, app: str, image: str) -> Iterator[str]:
        """A container from ``image`` with the volume at ``/VOLUME_ARCHIVE_ROOT``: created, never
        started (dockerd reads and writes a created container's volumes itself), removed after."""
        name = f"moorage-volcopy-{volume.volume_id}"
        self.containers.remove(name, force=True)  # one a cut-off copy left
        network = self.networks.ensure(tenant).name
        mount = Mount(self.volumes.prepare(self._volume_spec(volume, tenant, app)), f"/{VOLUME_ARCHIVE_ROOT}")
        spec = ContainerSpec(
            tenant=tenant,
            app=app,
            image=image,
            network=network,
            role=VOLUME_COPY_ROLE,
            name=name,
            command=["true"],
            mounts=(mount,),
            labels={INSTANCE_LABEL: self.instance},
            app_alias=False,
        )
        info = self.containers.create(spec, self.policy)
        try:
            yield info.id
        finally:
            self.containers.remove(info.id, force=True)

    # -- tenant networks ------------------------------------------------------------------
    def owned_networks(self) -> list[str]:
        tenants: list[str] = self.networks.labelled(INSTANCE_LABEL, self.instance)
        return tenants

    def remove_network(self, tenant: str) -> bool:
        labels = self.networks.labels_of(tenant)
        if labels is None or labels.get(INSTANCE_LABEL) != self.instance:
            return False  # gone, or made by another control plane (or before networks carried our mark)
        return self.networks.remove(tenant)

    # -- routes ---------------------------------------------------------------------------
    # A route is keyed by the app's id; tenant and app names only make its hostname.
    def route_body(self, route: Route) -> str:
        backends = [Backend(ip, route.port) for ip in route.ips]
        doc = self.router.render(AppRoute(route.tenant, route.app, backends, key=route.app_id, health_path=route.health_path))
        # A response header naming the release: how the swap *sees* that Traefik serves it.
        middleware = f"{route.app_id}-release"
        doc["http"]["middlewares"][middleware] = {"headers": {"customResponseHeaders": {RELEASE_HEADER: route.release}}}
        plain = doc["http"]["routers"][route.app_id]
        plain["middlewares"] = [*plain["middlewares"], middleware]
        return self.router.file_body(doc, owner=self.instance)

    def write_route(self, route: Route) -> None:
        body = self.route_body(route)
        self.router.guard.call(atomic_write, self.router.path_for(route.app_id), body, idempotent=True)
        # The file the code before id keys wrote for this app: the new one replaces it.
        self.router.remove_legacy(route.tenant, route.app)

    def route_is(self, route: Route) -> bool:
        path = self.router.path_for(route.app_id)
        try:  # a local read, not a call to Traefik: a missing file must not count against the breaker
            current = path.read_text()
        except FileNotFoundError:
            return False
        return current == self.route_body(route) and not self.router.legacy_path_for(route.tenant, route.app).exists()

    def route_upstream(self, hostname: str, url: str) -> Path:
        return self.router.write_upstream(hostname, url)

    def unroute_upstream(self, hostname: str, url: str) -> bool:
        return self.router.remove_upstream(hostname, url)

    def remove_route(self, app_id: str) -> bool:
        return self.router.remove(app_id)

    def owned_routes(self) -> list[str]:
        owned: list[str] = self.router.owned(self.instance)
        return owned

    def legacy_routes(self) -> list[str]:
        stems: list[str] = self.router.legacy()
        return stems

    def remove_legacy_route(self, stem: str) -> bool:
        return self.router.remove_legacy_stem(stem)

    def wait_unrouted(self, tenant: str, app: str, timeout: float) -> float | None:
        host = self.router.hostname(tenant, app)
        return wait_header_gone(self.settings.traefik_url, host, RELEASE_HEADER, timeout=timeout)

    def wait_served(self, route: Route, timeout: float) -> float | None:
        host = self.router.hostname(route.tenant, route.app)
        return wait_header(self.settings.traefik_url, host, RELEASE_HEADER, route.release, timeout=timeout)


# -- build step containers ------------------------------------------------------------------
def noting_step_containers(work_dir: Path, on_line: Callable[[str], None]) -> Callable[[str], None]:
    """``on_line``, also writing down each step container the build announces, with the
    time the build started and the time of the announcement."""
    note, started = work_dir / STEP_CONTAINERS_NOTE, time.time()

    def line(text: str) -> None:
        if match := STEP_CONTAINER.match(text):
            with note.open("a", encoding="ascii") as f:
                f.write(f"{match.group(1)} {started:.3f} {time.time():.3f}\n")
        on_line(text)

    return line


def remove_leftovers(work_dir: Path, containers: Containers) -> list[str]:
    """Remove the noted step containers that still exist; the note goes once all are handled."""
    note = work_dir / STEP_CONTAINERS_NOTE
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
