"""Start a managed database as a tenant service: a named volume for its data, one container
from the engine's image started through `runtime.containers` (so through the sandbox: runsc,
limits, dropped capabilities, the tenant's network), reachable under one in-network hostname.

Identity: a database's container and volume are named from its id (`moorage-db_...`), never from
tenant and database names joined by a separator that names may contain (`rt` + `ta-cache` and
`rt-ta` + `cache` would meet). An existing volume or container is adopted only when its labels
say it is this very database of this very tenant; anything else with the name is refused.
Objects made under the old `moorage-db-{tenant}-{name}` names carry the same id label, so they
stay reachable: they are found by label, not by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
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
ID_LABEL = "db.moorage/id"  # the database's id: what identifies its container and volume
HOSTNAME_PREFIX = "db-"
SETUP_HINT = "run `sudo bash deploy/host-setup.sh` to build the service images"


class DatabaseError(RuntimeError):
    """A managed-database operation failed; messages never carry credentials."""


class ServiceImageMissing(DatabaseError):
    pass


class DatabaseNotHealthy(DatabaseError):
    pass


class NameHeldByAnother(DatabaseError):
    """A container or volume has this database's name but its labels say it is not this
    database: it is never adopted, and what it is stays unsaid (no ids of other tenants)."""


_DATABASE_ID = re.compile(r"[a-z]{2,5}_[0-9a-z]{10,40}")


def resource_name_for(database_id: str) -> str:
    """Container and volume name: ids are unique and never reused, so names never meet."""
    if not _DATABASE_ID.fullmatch(database_id):
        raise ValueError(f"database id {database_id!r} is not a moorage id")
    return f"moorage-{database_id}"


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
    id: str  # the database's id, unique for all time: names its container and volume
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
        return resource_name_for(self.id)

    @property
    def identity(self) -> dict[str, str]:
        """The labels an object must carry to be this database's."""
        return {L.TENANT: self.tenant, ID_LABEL: self.id}

    def object_labels(self) -> dict[str, str]:
        return {**self.labels, NAME_LABEL: self.name, ENGINE_LABEL: self.engine, ID_LABEL: self.id}


@dataclass(frozen=True)
class DatabaseInstance:
    tenant: str
    name: str
    engine: str
    id: str
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
        """The database's volume: the one labelled as its own (whatever its name, so volumes
        made under older names keep their data), else a new one under its id-based name."""
        own = self._client.volumes.list(filters={"label": _label_filters(spec.identity)})
        if own:
            return str(own[0].name)
        name = spec.resource_name
        try:
            found = self._client.volumes.get(name)
        except docker.errors.NotFound:
            labels = L.moorage_labels(spec.tenant, spec.hostname, role=f"{ROLE}-volume", extra=spec.object_labels())
            self._client.volumes.create(name, driver="local", labels=labels)
            return name
        if not _is_own(found.attrs.get("Labels") or {}, spec):
            raise NameHeldByAnother(f"a volume named {name} exists but is not this database's; it was left alone")
        return name

    @guarded(idempotent=True)
    def purge_volumes(self, tenant: str, database_id: str) -> list[str]:
        """Remove the volume(s) labelled as this database's, and nothing else; their names."""
        identity = {L.TENANT: tenant, ID_LABEL: database_id}
        removed = []
        for volume in self._client.volumes.list(filters={"label": _label_filters(identity)}):
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                continue
            removed.append(str(volume.name))
        return removed

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
            tenant=spec.tenant,
            app=spec.hostname,
            image=spec.image or facts.image,
            network=spec.network,
            role=ROLE,
            name=spec.resource_name,
            env=facts.env(spec.credentials, memory_bytes),
            mounts=(Mount(volume, facts.data_path),),
            labels=spec.object_labels(),
            user=str(facts.uid),
            restart="unless-stopped",
        )

    def provision(self, spec: DatabaseSpec, policy: SandboxPolicy | None = None, *, timeout: float = 120.0) -> DatabaseInstance:
        """Volume + container, then wait until the image's HEALTHCHECK passes. An existing
        volume keeps its data (and its original password: the entrypoint only initialises
        an empty data directory)."""
        image = spec.image or spec.facts.image
        if not self._image_present(image):
            raise ServiceImageMissing(f"image {image} is missing: {SETUP_HINT}")
        volume = self.ensure_volume(spec)
        bound = log.bind(tenant=spec.tenant, database=spec.name, engine=spec.engine)
        existing = self.find(spec.tenant, spec.id)
        if existing is not None:  # a retried or reconciled call: bring the same one up
            bound.info("database.exists", container=existing.container_name)
            self.containers.start(existing.container_id)
            self.wait_healthy(existing, spec.credentials, timeout=timeout)
            return existing
        bound.info("database.provisioning", volume=volume, hostname=spec.hostname, network=spec.network)
        policy = policy or SandboxPolicy()
        limits = policy.limits or spec.facts.limits  # the engine's floor, not the app default (see EngineFacts.limits)
        policy = dataclasses.replace(policy, limits=limits)
        try:
            info = self.containers.run(self.container_spec(spec, volume, limits.memory_bytes), policy)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # Docker's message names the other container's id: not for tenants
                raise NameHeldByAnother(
                    f"a container named {spec.resource_name} exists but is not this database's; it was left alone"
                ) from None
            raise
        instance = DatabaseInstance(
            tenant=spec.tenant,
            name=spec.name,
            engine=spec.engine,
            id=spec.id,
            container_id=info.id,
            container_name=info.name,
            volume=volume,
            hostname=spec.hostname,
            network=spec.network,
        )
        try:
            elapsed = self.wait_healthy(instance, spec.credentials, timeout=timeout)
        except Exception:
            self.containers.remove(info.id, force=True)  # nothing half-made; the volume stays
            raise
        bound.info("database.healthy", container=info.name, seconds=round(elapsed, 2))
        return instance

    def wait_healthy(
        self, instance: DatabaseInstance, creds: Credentials | None = None, *, timeout: float = 120.0, interval: float = 0.5
    ) -> float:
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
                    f"{instance.engine} {instance.name} exited with code {info.exit_code}: {redact_text(tail, secrets)[-2000:]}"
                )
            if time.monotonic() - started > timeout:
                raise DatabaseNotHealthy(
                    f"{instance.engine} {instance.name} not healthy after {timeout:.0f}s "
                    f"(status {health}): {redact_text(_last_probe(info), secrets)}"
                )
            time.sleep(interval)

    def find(self, tenant: str, database_id: str) -> DatabaseInstance | None:
        """The database's container, by its labels: the tenant's, with this database's id."""
        found = [c for c in self.containers.find(tenant=tenant, role=ROLE) if c.labels.get(ID_LABEL) == database_id]
        return _instance(found[0]) if found else None

    def list(self, tenant: str) -> list[DatabaseInstance]:
        return [_instance(c) for c in self.containers.find(tenant=tenant, role=ROLE)]

    def stop(self, instance: DatabaseInstance, timeout: int = 30) -> None:
        """Clean shutdown (Postgres checkpoints, Redis saves its RDB)."""
        self.containers.stop(instance.container_id, timeout=timeout)

    def start(self, instance: DatabaseInstance, *, timeout: float = 120.0) -> float:
        self.containers.start(instance.container_id)
        return self.wait_healthy(instance, timeout=timeout)

    def stop_and_remove(self, container_id: str) -> None:
        """A clean stop, then the container goes; its volume stays."""
        try:
            self.containers.stop(container_id)
        except docker.errors.NotFound:
            return
        self.containers.remove(container_id, force=True)

    def remove(self, instance: DatabaseInstance, *, purge_volume: bool = False) -> None:
        """Stop cleanly (a forced remove is a SIGKILL: Redis would lose writes since its last
        snapshot), remove the container; the data volume stays unless `purge_volume`."""
        if not purge_volume:
            with contextlib.suppress(docker.errors.NotFound):
                self.stop(instance)
        self.containers.remove(instance.container_id, force=True)
        if purge_volume:
            self.purge_volumes(instance.tenant, instance.id)
        log.info(
            "database.removed", tenant=instance.tenant, database=instance.name, engine=instance.engine, volume_purged=purge_volume
        )


def _label_filters(labels: Mapping[str, str]) -> list[str]:
    return [f"{L.MANAGED}=true", *(f"{k}={v}" for k, v in labels.items())]


def _is_own(labels: Mapping[str, str], spec: DatabaseSpec) -> bool:
    return labels.get(L.MANAGED) == "true" and all(labels.get(k) == v for k, v in spec.identity.items())


def _last_probe(info: ContainerInfo) -> str:
    probes = ((info.attrs.get("State") or {}).get("Health") or {}).get("Log") or []
    return str(probes[-1].get("Output", "")).strip()[-500:] if probes else "no health probe yet"


def _instance(c: ContainerInfo) -> DatabaseInstance:
    mounts = c.attrs.get("Mounts") or []
    volume = next((m.get("Name", "") for m in mounts if m.get("Type") == "volume"), "")
    network = next(iter(c.ip_addresses), "") or str((c.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return DatabaseInstance(
        tenant=c.labels.get(L.TENANT, ""),
        name=c.labels.get(NAME_LABEL, ""),
        engine=c.labels.get(ENGINE_LABEL, ""),
        id=c.labels.get(ID_LABEL, ""),
        container_id=c.id,
        container_name=c.name,
        volume=volume,
        hostname=c.labels.get(L.APP, ""),
        network=network,
    )
