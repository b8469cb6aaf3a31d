"""One isolated bridge network per tenant, and one per build.

Docker isolates user-defined bridge networks from each other (its DOCKER-ISOLATION iptables
chains drop forwarding between bridges), so a tenant's containers reach each other by name
but never another tenant's. The host itself sits on every bridge (the gateway address), which
is how a host-run Traefik reaches containers by IP; a containerised Traefik is attached to
each tenant network instead (`settings.traefik_container`).

A build's RUN steps get a bridge network of their own (`BuildNetworks`): egress to the
internet (package mirrors), nothing else on it, and Docker's isolation chains keep it from
every tenant network. What no container may reach on any network, the host's own addresses
and link-local metadata services, is dropped by the host firewall deploy/host-setup.sh sets
up for every Docker bridge (`docker0`, `br-*`), so a network made later is covered the
moment it exists and leaves no rule behind when it goes.
"""

from __future__ import annotations

import builtins
import contextlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import docker.errors
from docker.models.networks import Network

from runtime import labels as L
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    name: str
    tenant: str
    subnet: str | None
    internal: bool


def _info(net: Network) -> NetworkInfo:
    attrs = net.attrs
    configs = (attrs.get("IPAM") or {}).get("Config") or [{}]
    return NetworkInfo(
        id=net.id or "",
        name=net.name or "",
        tenant=attrs["Labels"].get(L.TENANT, ""),
        subnet=configs[0].get("Subnet"),
        internal=bool(attrs.get("Internal")),
    )


class TenantNetworks:
    def __init__(self, engine: DockerEngine, owner_labels: Callable[[], dict[str, str]] = dict) -> None:
        self.engine = engine
        self.owner_labels = owner_labels  # who created a network, for its clean-up: read at creation
        self.guard = engine.guard
        self.settings = engine.settings

    def name_for(self, tenant: str) -> str:
        return f"{self.settings.tenant_network_prefix}{L.dns_label(tenant, 'tenant')}"

    @guarded(idempotent=True)
    def get(self, tenant: str) -> NetworkInfo | None:
        nets = self.engine.client.networks.list(names=[self.name_for(tenant)], filters={"label": L.selector(tenant=tenant)})
        # `names` matches substrings; keep the exact one.
        exact = [n for n in nets if n.name == self.name_for(tenant)]
        return _info(self.engine.client.networks.get(str(exact[0].id))) if exact else None

    @guarded(idempotent=False)
    def _create(self, tenant: str) -> NetworkInfo:
        net = self.engine.client.networks.create(
            self.name_for(tenant),
            driver="bridge",
            check_duplicate=True,
            internal=self.settings.tenant_networks_internal,
            labels=L.moorage_labels(tenant, role="network") | self.owner_labels(),
            # Same-tenant traffic allowed; cross-tenant traffic is blocked between bridges.
            options={"com.docker.network.bridge.enable_icc": "true"},
        )
        return _info(self.engine.client.networks.get(str(net.id)))

    # Docker's check_duplicate is best effort: two creates racing can both succeed and leave
    # two networks with one name. Creation is serialised per tenant within this process.
    _creating: ClassVar[dict[str, threading.Lock]] = {}
    _creating_guard: ClassVar[threading.Lock] = threading.Lock()

    def _lock_for(self, tenant: str) -> threading.Lock:
        with self._creating_guard:
            return self._creating.setdefault(self.name_for(tenant), threading.Lock())

    def ensure(self, tenant: str) -> NetworkInfo:
        """Create the tenant's network if missing (idempotent; safe under concurrent callers)."""
        with self._lock_for(tenant):
            info = self._ensure_exists(tenant)
        if self.settings.traefik_container:
            self.attach(tenant, self.settings.traefik_container)
        return info

    def _ensure_exists(self, tenant: str) -> NetworkInfo:
        info = self.get(tenant)
        if info is None:
            try:
                info = self._create(tenant)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a concurrent caller created it first
                    raise
                info = self.get(tenant)
                assert info is not None
        return info

    @guarded(idempotent=True)
    def attach(self, tenant: str, container: str) -> None:
        """Connect a shared container (a containerised Traefik) to the tenant's network."""
        net = self.engine.client.networks.get(self.name_for(tenant))
        net.reload()
        attached = {c.get("Name") for c in (net.attrs.get("Containers") or {}).values()}
        if container not in attached:
            try:
                net.connect(container)
            except docker.errors.APIError as exc:
                if "already exists" not in str(exc):
                    raise

    @guarded(idempotent=True)
    def remove(self, tenant: str) -> bool:
        """Remove the tenant's network; detaches the shared Traefik container first."""
        try:
            net = self.engine.client.networks.get(self.name_for(tenant))
        except docker.errors.NotFound:
            return False
        if self.settings.traefik_container:
            with contextlib.suppress(docker.errors.APIError):  # not attached
                net.disconnect(self.settings.traefik_container, force=True)
        try:
            net.remove()
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:  # a container is still attached: not an outage
            if exc.status_code in (403, 409):
                return False
            raise
        return True

    @guarded(idempotent=True)
    def list(self) -> list[NetworkInfo]:
        nets = self.engine.client.networks.list(filters={"label": L.selector(role="network")})
        return [_info(self.engine.client.networks.get(str(n.id))) for n in nets]

    @guarded(idempotent=True)
    def labelled(self, label: str, value: str) -> builtins.list[str]:
        """Tenants of the networks carrying ``label=value``."""
        nets = self.engine.client.networks.list(filters={"label": [*L.selector(role="network"), f"{label}={value}"]})
        return sorted({(n.attrs.get("Labels") or {}).get(L.TENANT, "") for n in nets} - {""})

    @guarded(idempotent=True)
    def labels_of(self, tenant: str) -> dict[str, str] | None:
        try:
            net = self.engine.client.networks.get(self.name_for(tenant))
        except docker.errors.NotFound:
            return None
        return dict(net.attrs.get("Labels") or {})


BUILD_ROLE = "build-network"


@dataclass(frozen=True)
class BuildNetwork:
    name: str
    tenant: str
    build: str  # L.BUILD_OF: the caller's name for the build (the deploy job's: a deployment id)


class BuildNetworks:
    """A fresh bridge network for each build, named at random (a retried build never meets its
    predecessor's) and labelled with the build it serves, so a sweep can tell a leftover."""

    def __init__(self, engine: DockerEngine, owner_labels: Callable[[], dict[str, str]] = dict) -> None:
        self.engine = engine
        self.owner_labels = owner_labels
        self.guard = engine.guard
        self.settings = engine.settings

    @guarded(idempotent=False)
    def create(self, tenant: str, build: str) -> str:
        name = f"{self.settings.build_network_prefix}{secrets.token_hex(6)}"
        self.engine.client.networks.create(
            name,
            driver="bridge",
            check_duplicate=True,
            labels=L.moorage_labels(tenant, role=BUILD_ROLE) | {L.BUILD_OF: build} | self.owner_labels(),
        )
        return name

    @guarded(idempotent=True)
    def remove(self, name: str) -> bool:
        """False when it is gone, or a container (a step an interrupted build left) still uses it."""
        try:
            self.engine.client.networks.get(name).remove()
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 409):
                return False
            raise
        return True

    @guarded(idempotent=True)
    def labelled(self, label: str, value: str) -> builtins.list[BuildNetwork]:
        """The build networks carrying ``label=value`` (the summary list: one call)."""
        nets = self.engine.client.api.networks(filters={"label": [*L.selector(role=BUILD_ROLE), f"{label}={value}"]})
        return [
            BuildNetwork(str(n["Name"]), (n.get("Labels") or {}).get(L.TENANT, ""), (n.get("Labels") or {}).get(L.BUILD_OF, ""))
            for n in nets
        ]
