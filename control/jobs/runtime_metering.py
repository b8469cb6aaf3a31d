"""What the metering sampler reads from the Docker engine, for ``DockerAppRuntime``: each
running container's counters and managed databases' volume sizes.

Counters come from the kernel's files where this host can read them (``runtime.cgroups``:
the control plane beside dockerd, the usual install), else from the engine's stats API
(``runtime.stats``), which costs about a second of the daemon's time per container.

Only containers with this control plane's instance label are read (never another
installation's), and only those of the roles it meters: apps, one-off runs, databases, environments.
"""

from __future__ import annotations

from typing import Any

import docker.errors

from control.jobs.docker_environment_pool import DockerPool, environment_role
from control.jobs.environment_names import ENVIRONMENT_ROLE, POOL_ROLE
from control.jobs.runtime_port import ContainerUsage
from runtime import cgroups
from runtime import labels as L
from runtime.containers import Containers
from runtime.databases.provision import ID_LABEL
from runtime.databases.provision import ROLE as DATABASE_ROLE
from runtime.docker_engine import DockerEngine
from runtime.stats import counters
from runtime.volume_usage import each_volume_bytes

METERED_ROLES = frozenset({"app", "run", DATABASE_ROLE, ENVIRONMENT_ROLE})


def container_usage(containers: Containers, instance_label: str, instance: str, pool: DockerPool) -> list[ContainerUsage]:
    found = []
    for info in containers.find():
        role = environment_role(info) or info.labels.get(L.ROLE, "")
        # A claimed pooled container's labels are the pool's: its tenant is the network it is on.
        tenant = pool.tenant_of(info) if info.labels.get(L.ROLE) == POOL_ROLE else info.labels.get(L.TENANT, "")
        if info.status != "running" or role not in METERED_ROLES or info.labels.get(instance_label) != instance:
            continue
        state = info.attrs.get("State") or {}
        c = cgroups.read(int(state.get("Pid") or 0))
        if c is None:
            try:
                stats = containers.stats(info.id)
            except docker.errors.APIError:
                continue  # stopped or removed between the listing and the reading
            if not stats or str(stats.get("read", "")).startswith("0001"):  # the zero time: no reading
                continue
            c = counters(stats)
        found.append(
            ContainerUsage(
                container_id=info.id,
                tenant=tenant,
                role=role,
                started_at=str(state.get("StartedAt", "")),
                cpu_seconds=c.cpu_seconds,
                memory_bytes=c.memory_bytes,
                memory_peak_bytes=c.memory_peak_bytes,
                net_rx_bytes=c.net_rx_bytes,
                net_tx_bytes=c.net_tx_bytes,
                block_read_bytes=c.block_read_bytes,
                block_write_bytes=c.block_write_bytes,
            )
        )
    return found


def database_volume_bytes(
    engine: DockerEngine, instance_label: str, instance: str, mountpoints: dict[str, str]
) -> dict[str, int]:
    api: Any = engine.client.api
    selector = [*L.selector(role=f"{DATABASE_ROLE}-volume"), f"{instance_label}={instance}"]  # ours only
    listed = api.volumes(filters={"label": selector}).get("Volumes") or []
    owners = {str(v["Name"]): str((v.get("Labels") or {}).get(ID_LABEL, "")) for v in listed}
    owners = {name: database_id for name, database_id in owners.items() if database_id}
    if not owners:
        return {}
    sizes = engine.guard.call(each_volume_bytes, api, list(owners), mountpoints, idempotent=True)
    found: dict[str, int] = {}
    for name, database_id in owners.items():
        found[database_id] = found.get(database_id, 0) + int(sizes.get(name, 0))
    return found
