"""Runtime configuration, built by the caller (control plane settings, tests, benches).

Adapters take a `RuntimeSettings`; none of them read the environment. `from_env` is a helper
for callers that want the `MOORAGE_*` names deploy/README.md documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LABEL_PREFIX = "moorage."


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 256 * 1024 * 1024
    nano_cpus: int = 500_000_000  # 0.5 CPU
    pids: int = 256
    tmpfs_bytes: int = 64 * 1024 * 1024  # /tmp when the root filesystem is read-only


@dataclass(frozen=True)
class RuntimeSettings:
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout: float = 60.0
    # Pinned so client construction makes no request; 1.41 = Docker 20.10 (Debian bookworm).
    # Docker 29+ needs >= 1.44; "auto" asks the daemon (a request at construction).
    docker_api_version: str = "1.41"
    # The runtime containers get unless the caller's policy says otherwise.
    sandbox_runtime: str = "runsc"
    # Runtimes that isolate the workload from the host kernel; any other needs an explicit
    # per-tenant `allow_unsandboxed` policy flag.
    sandboxed_runtimes: frozenset[str] = frozenset({"runsc"})
    # Every runtime a caller may name at all (must be registered in dockerd).
    runtime_allowlist: frozenset[str] = frozenset({"runsc", "runc"})
    default_limits: Limits = field(default_factory=Limits)
    # Capabilities operators allow tenants to add back after `cap_drop: ALL`.
    allowed_cap_add: frozenset[str] = frozenset(
        {"NET_BIND_SERVICE", "CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER", "KILL"}
    )
    docker_socket_path: str = "/var/run/docker.sock"
    tenant_network_prefix: str = "moorage-t-"
    build_network_prefix: str = "moorage-b-"  # one network per build (runtime.networks.BuildNetworks)
    # Internal tenant networks have no egress to the internet (the host still reaches them).
    tenant_networks_internal: bool = False
    # If Traefik runs in a container, its name: it is attached to every tenant network.
    traefik_container: str | None = None
    traefik_dynamic_dir: Path = Path("/var/lib/moorage/traefik/dynamic")
    traefik_entrypoints: tuple[str, ...] = ("web",)
    # The platform's own hostnames over HTTPS too (beside HTTP, which the swap's checks use):
    # per host from this ACME certResolver, or with the operator's wildcard certificate
    # (tls_wildcard: Traefik's default certificate, see runtime.router.render_platform_tls).
    # Neither: plain HTTP (tests, dev).
    tls_cert_resolver: str | None = None
    tls_wildcard: bool = False
    websecure_entrypoint: str = "websecure"
    base_domain: str = "moorage.localhost"
    # Circuit breaker per dependency.
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 30.0
    build_timeout: float = 1800.0
    build_memory_bytes: int = 2 * 1024 * 1024 * 1024
    # Disk one build may write (its layers, the running step's writes, its log); 0: no limit.
    build_disk_bytes: int = 10 * 1024 * 1024 * 1024
    # CA certificates (certificates only: runtime.ca_bundle.write_combined) that builds and
    # containers trust; None: the images' own trust stores only.
    ca_bundle: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeSettings:
        """Explicit mapping in (e.g. `os.environ`), so nothing reads the environment implicitly."""
        d = cls()

        def csv(name: str, default: frozenset[str]) -> frozenset[str]:
            raw = env.get(name)
            return frozenset(x.strip() for x in raw.split(",") if x.strip()) if raw else default

        limits = Limits(
            memory_bytes=int(env.get("MOORAGE_DEFAULT_MEMORY_BYTES", d.default_limits.memory_bytes)),
            nano_cpus=int(env.get("MOORAGE_DEFAULT_NANO_CPUS", d.default_limits.nano_cpus)),
            pids=int(env.get("MOORAGE_DEFAULT_PIDS", d.default_limits.pids)),
        )
        return cls(
            docker_url=env.get("MOORAGE_DOCKER_URL", d.docker_url),
            docker_api_version=env.get("MOORAGE_DOCKER_API_VERSION", d.docker_api_version),
            sandbox_runtime=env.get("MOORAGE_SANDBOX_RUNTIME", d.sandbox_runtime),
            sandboxed_runtimes=csv("MOORAGE_SANDBOXED_RUNTIMES", d.sandboxed_runtimes),
            runtime_allowlist=csv("MOORAGE_RUNTIME_ALLOWLIST", d.runtime_allowlist),
            default_limits=limits,
            allowed_cap_add=csv("MOORAGE_ALLOWED_CAP_ADD", d.allowed_cap_add),
            tenant_networks_internal=env.get("MOORAGE_TENANT_NETWORKS_INTERNAL", "0") == "1",
            traefik_container=env.get("MOORAGE_TRAEFIK_CONTAINER") or None,
            traefik_dynamic_dir=Path(env.get("MOORAGE_TRAEFIK_DYNAMIC_DIR", str(d.traefik_dynamic_dir))),
            tls_cert_resolver=env.get("MOORAGE_TLS_CERT_RESOLVER") or None,
            base_domain=env.get("MOORAGE_BASE_DOMAIN", d.base_domain),
        )
