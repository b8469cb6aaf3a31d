"""The runtime adapters the control plane uses, created lazily (so ``Services.build`` and
the control-plane unit tests never need Docker), plus the app-level operations the deploy
pipeline and the reconciler share: start an app container, write its route, find what we own.

Ownership: every app container also carries ``INSTANCE_LABEL`` = this control plane's
instance id (a file in the data dir). The reconciler only ever removes containers with the
moorage labels *and* our instance id: never another installation's, never a test's.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from control.settings import Settings
from runtime.containers import ContainerInfo, Containers
from runtime.docker_engine import DockerEngine
from runtime.healthcheck import wait_header
from runtime.images import Images
from runtime.networks import TenantNetworks
from runtime.resilience import BreakerRegistry, CircuitBreaker, Guard, RetryPolicy
from runtime.router import AppRoute, Backend, Router, atomic_write
from runtime.sandbox import ContainerSpec, SandboxPolicy
from runtime.settings import RuntimeSettings

INSTANCE_LABEL = "org.moorage.control-plane"
RELEASE_HEADER = "X-Moorage-Release"


def runtime_settings(settings: Settings) -> RuntimeSettings:
    defaults = RuntimeSettings()
    return RuntimeSettings(
        docker_url=settings.docker_url,
        sandbox_runtime=settings.docker_runtime,
        runtime_allowlist=defaults.runtime_allowlist | {settings.docker_runtime},
        traefik_dynamic_dir=settings.traefik_dynamic_dir,
        base_domain=settings.base_domain,
        build_timeout=float(settings.build_timeout_s),
        build_memory_bytes=settings.build_memory_bytes,
        build_disk_bytes=settings.build_disk_bytes,
    )


def instance_id(data_dir: Path) -> str:
    path = data_dir / "instance-id"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(f"mrg-{secrets.token_hex(8)}\n")
    return path.read_text().strip()


class AppRuntime:
    def __init__(self, settings: Settings, breakers: BreakerRegistry) -> None:
        self.settings = settings
        self.rt = runtime_settings(settings)
        self.breakers = breakers
        self._instance_lock = threading.Lock()

    # Breakers register (and so appear in /readyz and /metrics) on first use, like the adapters.
    @cached_property
    def docker_guard(self) -> Guard:
        breaker = CircuitBreaker("docker", failure_threshold=self.rt.breaker_failure_threshold,
                                 reset_timeout=self.rt.breaker_reset_timeout, registry=self.breakers)
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
        return TenantNetworks(self.engine)

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

    # -- containers ---------------------------------------------------------------------
    @staticmethod
    def container_name(tenant: str, app: str, deployment_id: str) -> str:
        return f"moorage-{tenant}-{app}-{deployment_id}"

    def start_app(self, *, tenant: str, app: str, release: str, image: str, env: dict[str, str], name: str) -> tuple[ContainerInfo, str]:
        """(container, its IP on the tenant network). Removes a leftover of the same name first
        (a retried deployment, a container recreated by the reconciler)."""
        network = self.networks.ensure(tenant).name
        self.containers.remove(name, force=True)
        spec = ContainerSpec(tenant=tenant, app=app, image=image, network=network, release=release, name=name,
                             env=env, labels={INSTANCE_LABEL: self.instance})
        info = self.containers.run(spec, self.policy)
        return info, info.ip_on(network)

    def owned_apps(self, **labels: str) -> list[ContainerInfo]:
        instance = self.instance
        found = self.containers.find(role="app", **labels)
        return [c for c in found if c.labels.get(INSTANCE_LABEL) == instance]

    def ip_of(self, info: ContainerInfo, tenant: str) -> str:
        return info.ip_on(self.networks.name_for(tenant))

    # -- routes -------------------------------------------------------------------------
    # A route is keyed by the app's id (`app_id`); tenant and app names only make its hostname.
    def route_body(self, app_id: str, tenant: str, app: str, ip: str, port: int, release: str) -> str:
        doc = self.router.render(AppRoute(tenant, app, [Backend(ip, port)], key=app_id))
        # A response header naming the release: how the swap *sees* that Traefik serves it.
        middleware = f"{app_id}-release"
        doc["http"]["middlewares"] = {middleware: {"headers": {"customResponseHeaders": {RELEASE_HEADER: release}}}}
        doc["http"]["routers"][app_id]["middlewares"] = [middleware]
        return self.router.file_body(doc, owner=self.instance)

    def write_route(self, app_id: str, tenant: str, app: str, ip: str, port: int, release: str) -> Path:
        body = self.route_body(app_id, tenant, app, ip, port, release)
        path = self.router.path_for(app_id)
        self.router.guard.call(atomic_write, path, body, idempotent=True)
        # The file the code before id keys wrote for this app: the new one replaces it.
        self.router.remove_legacy(tenant, app)
        return path

    def route_is(self, app_id: str, tenant: str, app: str, ip: str, port: int, release: str) -> bool:
        path = self.router.path_for(app_id)
        try:  # a local read, not a call to Traefik: a missing file must not count against the breaker
            current = path.read_text()
        except FileNotFoundError:
            return False
        return current == self.route_body(app_id, tenant, app, ip, port, release) and not self.router.legacy_path_for(tenant, app).exists()

    def remove_route(self, app_id: str) -> bool:
        return self.router.remove(app_id)

    def wait_served(self, tenant: str, app: str, release: str, timeout: float) -> float | None:
        host = self.router.hostname(tenant, app)
        return wait_header(self.settings.traefik_url, host, RELEASE_HEADER, release, timeout=timeout)
