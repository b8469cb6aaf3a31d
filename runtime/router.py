"""Traefik dynamic configuration through its file provider: one YAML file per app.

Files are written atomically (temp file in the same directory, fsync, os.replace, fsync of
the directory): Traefik, which reloads on every change in the watched directory, only ever
sees the old file or the new one. Temp files end in `.tmp`, an extension Traefik ignores.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.labels import dns_label, is_dns_label
from runtime.resilience import BreakerRegistry, CircuitBreaker, Guard, RetryPolicy, default_registry, guarded
from runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class Backend:
    host: str  # container IP on its tenant network (or a hostname Traefik can resolve)
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class AppRoute:
    tenant: str
    app: str
    backends: Sequence[Backend]
    extra_hosts: Sequence[str] = ()  # custom domains
    health_path: str | None = None  # Traefik active health check of backends
    middlewares: Sequence[str] = field(default_factory=tuple)


def _is_hostname(host: str) -> bool:
    """Strict: the name is spliced into a Traefik rule, so nothing but DNS labels gets in."""
    return len(host) <= 253 and all(is_dns_label(p) for p in host.split("."))


class Router:
    def __init__(self, settings: RuntimeSettings, *, dynamic_dir: Path | None = None,
                 guard: Guard | None = None, registry: BreakerRegistry | None = default_registry) -> None:
        self.settings = settings
        self.dynamic_dir = Path(dynamic_dir or settings.traefik_dynamic_dir)
        # A full-file replace is idempotent: retrying a failed write is always safe.
        self.guard = guard or Guard(
            CircuitBreaker("traefik-config", failure_threshold=settings.breaker_failure_threshold,
                           reset_timeout=settings.breaker_reset_timeout, registry=registry,
                           is_failure=lambda e: isinstance(e, OSError)),
            RetryPolicy(is_retryable=lambda e, _: isinstance(e, OSError)),
            is_failure=lambda e, _: isinstance(e, OSError),
        )

    def hostname(self, tenant: str, app: str) -> str:
        return f"{dns_label(app, 'app')}.{dns_label(tenant, 'tenant')}.{self.settings.base_domain}"

    def key(self, tenant: str, app: str) -> str:
        return f"{dns_label(tenant, 'tenant')}--{dns_label(app, 'app')}"

    def path_for(self, tenant: str, app: str) -> Path:
        return self.dynamic_dir / f"{self.key(tenant, app)}.yml"

    def render(self, route: AppRoute) -> dict[str, Any]:
        if not route.backends:
            raise ValueError("a route needs at least one backend")
        hosts = [self.hostname(route.tenant, route.app), *route.extra_hosts]
        for h in hosts:
            if not _is_hostname(h):
                raise ValueError(f"invalid hostname {h!r}")
        key = self.key(route.tenant, route.app)
        router: dict[str, Any] = {
            "rule": " || ".join(f"Host(`{h}`)" for h in hosts),
            "service": key,
            "entryPoints": list(self.settings.traefik_entrypoints),
        }
        if self.settings.tls_cert_resolver:
            router["tls"] = {"certResolver": self.settings.tls_cert_resolver}
        if route.middlewares:
            router["middlewares"] = list(route.middlewares)
        lb: dict[str, Any] = {"servers": [{"url": b.url} for b in route.backends], "passHostHeader": True}
        if route.health_path:
            lb["healthCheck"] = {"path": route.health_path, "interval": "5s", "timeout": "2s"}
        return {"http": {"routers": {key: router}, "services": {key: {"loadBalancer": lb}}}}

    @guarded(idempotent=True)
    def write(self, route: AppRoute) -> Path:
        """Create or replace the app's route file, atomically."""
        body = yaml.safe_dump(self.render(route), sort_keys=True)
        target = self.path_for(route.tenant, route.app)
        atomic_write(target, body)
        return target

    @guarded(idempotent=True)
    def remove(self, tenant: str, app: str) -> bool:
        try:
            self.path_for(tenant, app).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.dynamic_dir)
        return True

    @guarded(idempotent=True)
    def list(self) -> list[str]:
        """Keys (`tenant--app`) of the routes on disk, for the reconciler."""
        return sorted(p.stem for p in self.dynamic_dir.glob("*.yml") if "--" in p.stem)


def atomic_write(target: Path, body: str, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
