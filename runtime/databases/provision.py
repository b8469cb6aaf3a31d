"""Start a managed database as a tenant service: a named volume for its data, one container
from the engine's image started through `runtime.containers` (so through the sandbox: runsc,
limits, dropped capabilities, the tenant's network), reachable under one in-network hostname.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import docker.errors
import structlog

from runtime import labels as L
from runtime.containers import ContainerInfo, Containers
from runtime.databases.engines import Credentials, EngineFacts, engine_facts
from runtime.databases.redaction import redact_text
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded
from runtime.sandbox import ContainerSpec, Mount, SandboxPolicy

log = structlog.get_logger("moorage.runtime.databases")

ROLE = "database"
# Not `moorage.`-prefixed: those are identity labels only `runtime.labels` may set.
NAME_LABEL = "db.moorage/name"
ENGINE_LABEL = "db.moorage/engine"
HOSTNAME_PREFIX = "db-"
SETUP_HINT = "run `sudo bash deploy/host-setup.sh` to build the service images"


class DatabaseError(RuntimeError):
    """A managed-database operation failed; messages never carry credentials."""


class ServiceImageMissing(DatabaseError):
    pass


class DatabaseNotHealthy(DatabaseError):
    pass


def hostname_for(name: str) -> str:
    """The in-network hostname (network alias) apps use: `db-<name>`. The prefix keeps it
    apart from app names, which are aliases on the same network."""
    return L.dns_label(f"{HOSTNAME_PREFIX}{L.dns_label(name, 'database')}", "database hostname")


@dataclass(frozen=True)
class DatabaseSpec:
    tenant: str
    name: str  # the tenant's name for it (a DNS label)
    engine: str  # "postgres" | "redis"
    network: str  # the tenant's network (TenantNetworks.name_for)
    credentials: Credentials
    image: str | None = None  # None = the engine's image
    labels: Mapping[str, str] = field(default_factory=dict)  # extra, non-`moorage.` labels

    @property
    def facts(self) -> EngineFacts:
        return engine_facts(self.engine)

    @property
    def hostname(self) -> str:
        return hostname_for(self.name)

    @property
    def resource_name(self) -> str:
        """Container and volume name; tenant and name are DNS labels, so it is unique."""
        return f"moorage-db-{self.tenant}-{self.name}"


@dataclass(frozen=True)
class DatabaseInstance:
    tenant: str
    name: str
    engine: str
    container_id: str
    container_name: str
    volume: str
    hostname: str
    network: str

    @property
    def facts(self) -> EngineFacts:
        return engine_facts(self.engine)

    def url(self, creds: Credentials) -> str:
        """Connection URL for apps on the tenant network (contains the password: hand it to
        the app's environment, log `redact_url(...)` of it at most)."""
        return self.facts.url(self.hostname, creds)


class Databases:
    def __init__(self, engine: DockerEngine, containers: Containers | None = None) -> None:
        self.engine = engine
        self.guard = engine.guard
        self.containers = containers or Containers(engine)

    @property
    def _client(self) -> docker.DockerClient:
        return self.engine.client

    # --- volumes --------------------------------------------------------------------------
    @guarded(idempotent=True)
    def ensure_volume(self, spec: DatabaseSpec) -> str:
        name = spec.resource_name
        try:
            self._client.volumes.get(name)
        except docker.errors.NotFound:
            labels = L.moorage_labels(spec.tenant, spec.hostname, role=f"{ROLE}-volume",
                                      extra={**spec.labels, NAME_LABEL: spec.name, ENGINE_LABEL: spec.engine})
            self._client.volumes.create(name, driver="local", labels=labels)
        return name

    @guarded(idempotent=True)
    def remove_volume(self, name: str) -> bool:
        try:
            self._client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            return False
        return True

    @guarded(idempotent=True)
    def _image_present(self, image: str) -> bool:
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    # --- lifecycle ------------------------------------------------------------------------
    def container_spec(self, spec: DatabaseSpec, volume: str, memory_bytes: int | None = None) -> ContainerSpec:
        facts = spec.facts
        return ContainerSpec(
            tenant=spec.tenant, app=spec.hostname, image=spec.image or facts.image,
            network=spec.network, role=ROLE, name=spec.resource_name,
            env=facts.env(spec.credentials, memory_bytes), mounts=(Mount(volume, facts.data_path),),
            labels={**spec.labels, NAME_LABEL: spec.name, ENGINE_LABEL: spec.engine},
            user=str(facts.uid), restart="unless-stopped",
        )

    def provision(self, spec: DatabaseSpec, policy: SandboxPolicy | None = None, *,
                  timeout: float = 120.0) -> DatabaseInstance:
        """Volume + container, then wait until the image's HEALTHCHECK passes. An existing
        volume keeps its data (and its original password: the entrypoint only initialises
        an empty data directory)."""
        image = spec.image or spec.facts.image
        if not self._image_present(image):
            raise ServiceImageMissing(f"image {image} is missing: {SETUP_HINT}")
        volume = self.ensure_volume(spec)
        bound = log.bind(tenant=spec.tenant, database=spec.name, engine=spec.engine)
        existing = self.find(spec.tenant, spec.name)
        if existing is not None:  # a retried or reconciled call: bring the same one up
            bound.info("database.exists", container=existing.container_name)
            self.containers.start(existing.container_id)
            self.wait_healthy(existing, spec.credentials, timeout=timeout)
            return existing
        bound.info("database.provisioning", volume=volume, hostname=spec.hostname, network=spec.network)
        policy = policy or SandboxPolicy()
        limits = policy.limits or spec.facts.limits  # the engine's floor, not the app default (see EngineFacts.limits)
        policy = dataclasses.replace(policy, limits=limits)
        info = self.containers.run(self.container_spec(spec, volume, limits.memory_bytes), policy)
        instance = DatabaseInstance(tenant=spec.tenant, name=spec.name, engine=spec.engine,
                                    container_id=info.id, container_name=info.name, volume=volume,
                                    hostname=spec.hostname, network=spec.network)
        try:
            elapsed = self.wait_healthy(instance, spec.credentials, timeout=timeout)
        except Exception:
            self.containers.remove(info.id, force=True)  # nothing half-made; the volume stays
            raise
        bound.info("database.healthy", container=info.name, seconds=round(elapsed, 2))
        return instance

    def wait_healthy(self, instance: DatabaseInstance, creds: Credentials | None = None, *,
                     timeout: float = 120.0, interval: float = 0.5) -> float:
        """Seconds until Docker reports the container healthy; raises `DatabaseNotHealthy` when
        it exits or the deadline passes (with the health check's last output, redacted)."""
        started = time.monotonic()
        secrets = creds.secrets() if creds else ()
        restarts: int | None = None
        while True:
            info = self.containers.inspect(instance.container_id)
            state = info.attrs.get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return time.monotonic() - started
            restarts = info.attrs.get("RestartCount", 0) if restarts is None else restarts
            # The restart policy would hide a crash loop until the deadline: fail on the first.
            if info.status in ("exited", "dead") or info.attrs.get("RestartCount", 0) > restarts:
                tail = "\n".join(self.containers.logs(instance.container_id, tail=20))
                raise DatabaseNotHealthy(
                    f"{instance.engine} {instance.name} exited with code {info.exit_code}: "
                    f"{redact_text(tail, secrets)[-2000:]}")
            if time.monotonic() - started > timeout:
                raise DatabaseNotHealthy(
                    f"{instance.engine} {instance.name} not healthy after {timeout:.0f}s "
                    f"(status {health}): {redact_text(_last_probe(info), secrets)}")
            time.sleep(interval)

    def find(self, tenant: str, name: str) -> DatabaseInstance | None:
        found = [c for c in self.containers.find(tenant=tenant, role=ROLE)
                 if c.labels.get(NAME_LABEL) == name]
        return _instance(found[0]) if found else None

    def list(self, tenant: str) -> list[DatabaseInstance]:
        return [_instance(c) for c in self.containers.find(tenant=tenant, role=ROLE)]

    def stop(self, instance: DatabaseInstance, timeout: int = 30) -> None:
        """Clean shutdown (Postgres checkpoints, Redis saves its RDB)."""
        self.containers.stop(instance.container_id, timeout=timeout)

    def start(self, instance: DatabaseInstance, *, timeout: float = 120.0) -> float:
        self.containers.start(instance.container_id)
        return self.wait_healthy(instance, timeout=timeout)

    def remove(self, instance: DatabaseInstance, *, purge_volume: bool = False) -> None:
        """Stop cleanly (a forced remove is a SIGKILL: Redis would lose writes since its last
        snapshot), remove the container; the data volume stays unless `purge_volume`."""
        if not purge_volume:
            try:
                self.stop(instance)
            except docker.errors.NotFound:
                pass
        self.containers.remove(instance.container_id, force=True)
        if purge_volume:
            self.remove_volume(instance.volume)
        log.info("database.removed", tenant=instance.tenant, database=instance.name,
                 engine=instance.engine, volume_purged=purge_volume)


def _last_probe(info: ContainerInfo) -> str:
    probes = ((info.attrs.get("State") or {}).get("Health") or {}).get("Log") or []
    return str(probes[-1].get("Output", "")).strip()[-500:] if probes else "no health probe yet"


def _instance(c: ContainerInfo) -> DatabaseInstance:
    mounts = c.attrs.get("Mounts") or []
    volume = next((m.get("Name", "") for m in mounts if m.get("Type") == "volume"), "")
    network = next(iter(c.ip_addresses), "") or str((c.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return DatabaseInstance(tenant=c.labels.get(L.TENANT, ""), name=c.labels.get(NAME_LABEL, ""),
                            engine=c.labels.get(ENGINE_LABEL, ""), container_id=c.id,
                            container_name=c.name, volume=volume, hostname=c.labels.get(L.APP, ""),
                            network=network)
