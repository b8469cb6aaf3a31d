"""Where this control plane expects Docker, runsc, Traefik and the base images, from its
settings: what ``/readyz`` and ``moorage admin check-host`` look for (``runtime.host_check``)."""

from __future__ import annotations

from control.settings import Settings
from runtime.databases.engines import ENGINES
from runtime.host_check import HostTargets
from runtime.settings import RuntimeSettings


def host_targets(settings: Settings) -> HostTargets:
    # An allow-list entry without a tag (a whole repository) names no one image to look for.
    tagged = [image for image in settings.allowed_images if ":" in image.rsplit("/", 1)[-1] or "@" in image]
    return HostTargets(
        docker_url=settings.docker_url,
        sandbox_runtime=settings.docker_runtime,
        # Builds are sandboxed as apps are; an operator who runs apps under runc gets no check.
        build_runtime=settings.docker_runtime if settings.docker_runtime in RuntimeSettings().sandboxed_runtimes else None,
        images=tuple(dict.fromkeys([*tagged, *(engine.image for engine in ENGINES.values())])),
        router_url=settings.traefik_url,
        traefik_ping_address=settings.traefik_ping_address,
        route_dir=settings.traefik_dynamic_dir,
    )
