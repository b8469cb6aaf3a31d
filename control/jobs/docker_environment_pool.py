"""Environment containers on the Docker engine, made now for a tenant or ahead of time for a
warm pool (``DockerAppRuntime``'s environment and pool methods).

One function makes every environment container's spec, so a pooled container is the one
``start_environment`` would have made: the same sandbox, limits, idle command and working
directory. What differs is only who it is for. A pooled container is made for no tenant, on
the pool's own internal network (no egress, no tenant's containers), named
``moorage-pool-<slot>``. Claiming it renames it to the environment's name (the engine refuses
a second rename of the old name, so two claims cannot both win), then connects it to the
tenant's network, and disconnects it from the pool's right after. gVisor here shares the container's
network namespace (runsc ``--network=host``), so the sandbox sees the move as it happens.

A container's labels cannot change, so a claimed pooled container still carries the pool's:
the environment it serves is in its name, and its tenant is the tenant network it is on.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import replace

import docker.errors
import structlog

from control.jobs.environment_names import (
    ENVIRONMENT_ROLE,
    POOL_NETWORK,
    POOL_NETWORK_ROLE,
    POOL_ROLE,
    POOL_TENANT,
    claimed_environment_id,
    environment_container_name,
    environment_label,
    pooled_container_name,
)
from control.jobs.runtime_port import EnvironmentSpec, ExecRefused, PooledEnvironment
from runtime import labels as L
from runtime.containers import ContainerInfo, Containers
from runtime.failures import is_dependency_failure
from runtime.networks import TenantNetworks
from runtime.resilience import guarded
from runtime.sandbox import ContainerSpec, SandboxPolicy
from runtime.settings import RuntimeSettings

log = structlog.get_logger("moorage.environment_pool")
IDLE_COMMAND = ("sleep", "infinity")
WORKDIR = "/workspace"
MIB = 1024 * 1024


def environment_container(
    *,
    tenant: str,
    app: str,
    name: str,
    image: str,
    network: str,
    role: str,
    millicpus: int,
    memory_mb: int,
    pids: int,
    env: dict[str, str],
    instance_labels: dict[str, str],
    policy: SandboxPolicy,
    rt: RuntimeSettings,
) -> tuple[ContainerSpec, SandboxPolicy]:
    """Every environment container's spec and sandbox policy, for a tenant's or the pool's."""
    limits = replace(rt.default_limits, memory_bytes=memory_mb * MIB, nano_cpus=millicpus * 1_000_000, pids=pids)
    spec = ContainerSpec(
        tenant=tenant,
        app=app,
        image=image,
        network=network,
        role=role,
        name=name,
        command=list(IDLE_COMMAND),
        env=env,
        labels=instance_labels,
        app_alias=False,
        working_dir=WORKDIR,
    )
    return spec, replace(policy, limits=limits)


def run_idling(containers: Containers, spec: ContainerSpec, policy: SandboxPolicy) -> ContainerInfo:
    """Start the container and check that it idles; ``ExecRefused`` when it cannot."""
    try:
        info = containers.run(spec, policy)
    except docker.errors.APIError as exc:
        if exc.status_code in (400, 404, 500) and not is_dependency_failure(exc, idempotent=False):
            raise ExecRefused(f"the environment's container would not start: {exc.explanation or exc}") from None
        raise
    if info.status != "running":
        containers.remove(info.id, force=True)
        raise ExecRefused(f"the image {spec.image} cannot idle as an environment (its `sleep infinity` ended)")
    return info


class DockerPool:
    """The warm pool's containers and network on one engine."""

    def __init__(
        self,
        containers: Containers,
        networks: TenantNetworks,
        *,
        instance_labels: Callable[[], dict[str, str]],
        policy: Callable[[], SandboxPolicy],
        rt: RuntimeSettings,
        pids: int,
    ) -> None:
        self.containers = containers
        self.networks = networks
        self.engine = containers.engine
        self.guard = containers.engine.guard
        self.instance_labels = instance_labels
        self.policy = policy
        self.rt = rt
        self.pids = pids

    def start(self, image: str, millicpus: int, memory_mb: int) -> PooledEnvironment:
        self._ensure_network()
        slot = secrets.token_hex(6)
        spec, policy = environment_container(
            tenant=POOL_TENANT,
            app=f"pool-{slot}",
            name=pooled_container_name(slot),
            image=image,
            network=POOL_NETWORK,
            role=POOL_ROLE,
            millicpus=millicpus,
            memory_mb=memory_mb,
            pids=self.pids,
            env={},
            instance_labels=self.instance_labels(),
            policy=self.policy(),
            rt=self.rt,
        )
        return self._pooled(run_idling(self.containers, spec, policy))

    def idle(self) -> list[PooledEnvironment]:
        return [self._pooled(info) for info in self._ours() if claimed_environment_id(info.name) is None]

    def claimed(self) -> list[ContainerInfo]:
        """Pooled containers an environment claimed: each serves the environment in its name."""
        return [info for info in self._ours() if claimed_environment_id(info.name) is not None]

    def claim(self, pooled: PooledEnvironment, spec: EnvironmentSpec) -> ContainerInfo | None:
        if spec.env:
            raise ValueError("a pooled container cannot take env vars: only an environment without any can claim it")
        name = environment_container_name(spec.environment_id)
        claimed = self._rename(pooled.name, name)
        if claimed is None:  # the name is taken: a retried create's leftover
            self.containers.remove(name, force=True)
            claimed = self._rename(pooled.name, name)
        if not claimed:
            return None
        try:
            network = self.networks.ensure(spec.tenant).name
            self._connect(pooled.container_id, network)
            info = self.containers.inspect(pooled.container_id)
        except BaseException:
            self.containers.remove(pooled.container_id, force=True)
            raise
        # Off the claim's path: on the pool's network the container reaches nothing (no
        # egress, no traffic between its containers), and its tenant is told by the other.
        threading.Thread(target=self._leave_pool, args=(pooled.container_id,), name="moorage-pool-leave", daemon=True).start()
        return info

    def tenant_of(self, info: ContainerInfo) -> str:
        """The tenant a claimed pooled container serves: the one whose network it is on."""
        prefix = self.rt.tenant_network_prefix
        tenants = [n.removeprefix(prefix) for n in info.ip_addresses if n.startswith(prefix) and n != POOL_NETWORK]
        return tenants[0] if len(tenants) == 1 and L.is_dns_label(tenants[0]) else ""

    # -- engine calls ------------------------------------------------------------------------
    def _ours(self) -> list[ContainerInfo]:
        mine = self.instance_labels()
        return [c for c in self.containers.find(role=POOL_ROLE) if all(c.labels.get(k) == v for k, v in mine.items())]

    @guarded(idempotent=False)
    def _rename(self, old: str, new: str) -> bool | None:
        """The claim: False when another caller claimed it first (by the old name: once renamed,
        a second rename finds nothing); None when ``new`` is taken."""
        try:
            self.engine.client.api.rename(old, new)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return None
            raise
        return True

    @guarded(idempotent=True)
    def _connect(self, container_id: str, network: str) -> None:
        try:
            self.engine.client.api.connect_container_to_network(container_id, network)
        except docker.errors.APIError as exc:
            if exc.status_code != 403 or "already exists" not in str(exc):  # a retried connect
                raise

    def _leave_pool(self, container_id: str) -> None:
        try:
            self.engine.client.api.disconnect_container_from_network(container_id, POOL_NETWORK)
        except docker.errors.APIError as exc:  # gone meanwhile (deleted at once), or not connected any more
            log.info("environment_pool_leave_failed", container=container_id[:12], error=str(exc))

    @guarded(idempotent=True)
    def _ensure_network(self) -> None:
        client = self.engine.client
        if any(n.name == POOL_NETWORK for n in client.networks.list(names=[POOL_NETWORK])):
            return
        try:
            client.networks.create(
                POOL_NETWORK,
                driver="bridge",
                check_duplicate=True,
                internal=True,  # no egress: nothing runs in a pooled container before a tenant claims it
                labels=L.moorage_labels(POOL_TENANT, role=POOL_NETWORK_ROLE) | self.instance_labels(),
                options={"com.docker.network.bridge.enable_icc": "false"},
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # a concurrent caller made it first
                raise

    def _pooled(self, info: ContainerInfo) -> PooledEnvironment:
        host = info.attrs.get("HostConfig") or {}
        return PooledEnvironment(
            container_id=info.id,
            name=info.name,
            image=info.image,
            millicpus=int(host.get("NanoCpus") or 0) // 1_000_000,
            memory_mb=int(host.get("Memory") or 0) // MIB,
            running=info.status == "running",
        )


def environment_role(info: ContainerInfo) -> str | None:
    """``environment`` for a tenant's environment container, pooled and claimed or not; None otherwise."""
    role = info.labels.get(L.ROLE, "")
    if role == ENVIRONMENT_ROLE or (role == POOL_ROLE and claimed_environment_id(info.name) is not None):
        return ENVIRONMENT_ROLE
    return None


def claimed_label(info: ContainerInfo) -> str:
    """The ``app`` label a claimed pooled container would carry had it been made for its environment."""
    environment_id = claimed_environment_id(info.name)
    assert environment_id is not None
    return environment_label(environment_id)
