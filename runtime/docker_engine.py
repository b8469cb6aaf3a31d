"""Docker engine client construction, ping and health, behind the `docker` circuit breaker.

The other adapters (networks, containers, images) share one `DockerEngine` and so one breaker:
when dockerd is down, every call fails fast with `CircuitOpenError` instead of piling up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import docker

from runtime.resilience import (
    BreakerRegistry,
    CircuitBreaker,
    Guard,
    RetryPolicy,
    default_registry,
    guarded,
)
from runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    version: str | None = None
    runtimes: tuple[str, ...] = ()
    missing_runtimes: tuple[str, ...] = ()
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class DockerEngine:
    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        client: docker.DockerClient | None = None,
        guard: Guard | None = None,
        registry: BreakerRegistry | None = default_registry,
        breaker_name: str = "docker",
    ) -> None:
        self.settings = settings
        self.guard = guard or Guard(
            CircuitBreaker(
                breaker_name,
                failure_threshold=settings.breaker_failure_threshold,
                reset_timeout=settings.breaker_reset_timeout,
                registry=registry,
            ),
            RetryPolicy(),
        )
        # A pinned API version means construction makes no request, so it cannot fail while
        # dockerd is down: calls fail later, through the breaker.
        self._client = client or docker.DockerClient(
            base_url=settings.docker_url, timeout=int(settings.docker_timeout), version=settings.docker_api_version
        )

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    @guarded(idempotent=True)
    def ping(self) -> bool:
        return bool(self._client.ping())

    @guarded(idempotent=True)
    def info(self) -> dict[str, Any]:
        return dict(self._client.info())

    @guarded(idempotent=True)
    def version(self) -> str:
        return str(self._client.version().get("Version", "unknown"))

    def health(self) -> EngineHealth:
        """For /readyz: reachable, and every runtime moorage may use is registered."""
        try:
            info = self.info()
        except Exception as exc:  # reported, not raised: health must always answer
            return EngineHealth(ok=False, error=f"{type(exc).__name__}: {exc}")
        runtimes = tuple(sorted(info.get("Runtimes", {})))
        wanted = {self.settings.sandbox_runtime} | set(self.settings.runtime_allowlist)
        missing = tuple(sorted(wanted - set(runtimes)))
        return EngineHealth(
            ok=not missing,
            version=info.get("ServerVersion"),
            runtimes=runtimes,
            missing_runtimes=missing,
            error=f"runtimes not registered in dockerd: {', '.join(missing)}" if missing else None,
            details={"containers_running": info.get("ContainersRunning")},
        )

    def close(self) -> None:
        self._client.close()
