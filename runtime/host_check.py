"""Is this host a moorage runtime host? One check per component that deploys need, each
saying what is wrong and what to do next: for ``/readyz``, ``moorage admin check-host``
and ``deploy/dev.sh run``, so a new host names what it lacks instead of failing the first
deployment.

The checks use their own short-timeout Docker client, outside the ``docker`` circuit
breaker: a readiness probe must neither open the breaker real calls share nor be answered
by it ("circuit open" would hide why Docker is unreachable).
"""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors
import httpx

from runtime.settings import RuntimeSettings

OK = "ok"
HOST_SETUP = "run `sudo bash deploy/host-setup.sh`"  # idempotent: dockerd, runsc, Traefik, base images
# In the order they are reported: later checks depend on earlier ones.
COMPONENTS = ("docker", "sandbox_runtime", "base_images", "router", "traefik_ping", "route_dir")


@dataclass(frozen=True)
class HostTargets:
    """Where this control plane expects each component (from its settings)."""

    docker_url: str = "unix:///var/run/docker.sock"
    sandbox_runtime: str = "runsc"
    # The runtime builds' RUN steps must get: the classic builder gives them dockerd's
    # default-runtime (None: not checked, e.g. an operator who chose runc for everything).
    build_runtime: str | None = "runsc"
    images: tuple[str, ...] = ()
    router_url: str = "http://127.0.0.1:80"  # Traefik's HTTP entrypoint
    traefik_ping_address: str = "127.0.0.1:8082"
    route_dir: Path = Path("/var/lib/moorage/traefik/dynamic")
    timeout_s: float = 1.0


@dataclass(frozen=True)
class Finding:
    component: str
    detail: str  # "ok", or what is wrong
    remedy: str = ""  # what to do next, when not ok

    @property
    def ok(self) -> bool:
        return self.detail == OK


def check_host(targets: HostTargets) -> list[Finding]:
    """Every component of ``COMPONENTS``, in that order; never raises."""
    return [*_docker(targets), _router(targets), _traefik_ping(targets), _route_dir(targets)]


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _docker(t: HostTargets) -> list[Finding]:
    def without_engine(problem: Finding) -> list[Finding]:
        why, then = "not checked: the Docker engine does not answer", f"make the engine answer first: {HOST_SETUP}"
        return [problem, Finding("sandbox_runtime", why, then), Finding("base_images", why, then)]

    if t.docker_url.startswith("unix://"):
        sock = Path(t.docker_url.removeprefix("unix://"))
        if not sock.exists():
            return without_engine(
                Finding(
                    "docker",
                    f"no Docker engine socket at {sock}",
                    f"install and start dockerd: {HOST_SETUP}; or set MOORAGE_DOCKER_URL to the engine's socket",
                )
            )
        if not os.access(sock, os.R_OK | os.W_OK):
            return without_engine(
                Finding(
                    "docker",
                    f"{_user()} may not use {sock}",
                    "run the control plane as root or in the `docker` group (root-equivalent: whoever reaches the "
                    "socket can start a privileged container), e.g. SupplementaryGroups=docker in "
                    "deploy/systemd/moorage.service",
                )
            )
    try:
        client = docker.DockerClient(
            base_url=t.docker_url, timeout=max(1, round(t.timeout_s)), version=RuntimeSettings().docker_api_version
        )
    except docker.errors.DockerException as exc:
        return without_engine(Finding("docker", f"unusable MOORAGE_DOCKER_URL {t.docker_url!r}: {exc}", "fix MOORAGE_DOCKER_URL"))
    try:
        try:
            info = client.info()
        except Exception as exc:  # reported, not raised: a check must always answer
            return without_engine(
                Finding(
                    "docker",
                    f"no answer from the Docker engine at {t.docker_url}: {type(exc).__name__}",
                    f"start dockerd: {HOST_SETUP} (its log: /var/log/moorage/dockerd.log)",
                )
            )
        return [Finding("docker", OK), _sandbox_runtime(t, info), _base_images(t, client)]
    finally:
        client.close()


def _sandbox_runtime(t: HostTargets, info: dict[str, object]) -> Finding:
    runtimes = info.get("Runtimes")
    registered = sorted(runtimes) if isinstance(runtimes, dict) else []
    default = info.get("DefaultRuntime")
    if t.sandbox_runtime in registered and t.build_runtime not in (None, default):
        return Finding(
            "sandbox_runtime",
            f"dockerd's default runtime is {default!r}: build steps (RUN) would run under it, not {t.build_runtime!r}",
            f'{HOST_SETUP}: it sets "default-runtime": "{t.build_runtime}" in /etc/docker/daemon.json',
        )
    if t.sandbox_runtime in registered:
        return Finding("sandbox_runtime", OK)
    return Finding(
        "sandbox_runtime",
        f"dockerd has no runtime {t.sandbox_runtime!r} (registered: {', '.join(registered) or 'none'})",
        f"{HOST_SETUP}: it installs runsc and registers it in /etc/docker/daemon.json",
    )


def _base_images(t: HostTargets, client: docker.DockerClient) -> Finding:
    missing = []
    for image in t.images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
        except Exception as exc:  # the engine went away mid-check
            return Finding("base_images", f"could not look up {image}: {type(exc).__name__}", f"start dockerd: {HOST_SETUP}")
    if not missing:
        return Finding("base_images", OK)
    return Finding(
        "base_images",
        f"missing: {', '.join(missing)} (apps build FROM them, managed databases run them)",
        f"{HOST_SETUP}: it builds them locally, no registry needed",
    )


def _router(t: HostTargets) -> Finding:
    """Does Traefik's entrypoint accept connections? Apps are unreachable while it does not."""
    parts = urlsplit(t.router_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=t.timeout_s / 2).close()
    except OSError as exc:
        return Finding(
            "router",
            f"unreachable: {type(exc).__name__} at {parts.hostname}:{port}; apps cannot be reached until it is back",
            f"start Traefik: {HOST_SETUP}; MOORAGE_TRAEFIK_URL names its HTTP entrypoint",
        )
    return Finding("router", OK)


def _traefik_ping(t: HostTargets) -> Finding:
    url = f"http://{t.traefik_ping_address}/ping"
    remedy = (
        f"start Traefik: {HOST_SETUP} (moorage-traefik.service under systemd); "
        "MOORAGE_TRAEFIK_PING_ADDRESS names its ping entrypoint"
    )
    try:
        answer = httpx.get(url, timeout=t.timeout_s / 2)
    except httpx.HTTPError as exc:
        return Finding("traefik_ping", f"no answer at {url}: {type(exc).__name__}", remedy)
    if answer.status_code != 200:
        return Finding("traefik_ping", f"{url} answered {answer.status_code}, not 200", remedy)
    return Finding("traefik_ping", OK)


def _route_dir(t: HostTargets) -> Finding:
    where = "or set MOORAGE_TRAEFIK_DYNAMIC_DIR to the directory Traefik's file provider watches"
    if not t.route_dir.is_dir():
        return Finding("route_dir", f"{t.route_dir} does not exist", f"{HOST_SETUP} (it creates it), {where}")
    # access() also answers "no" on a read-only mount (systemd's ProtectSystem without ReadWritePaths).
    if not os.access(t.route_dir, os.W_OK | os.X_OK):
        return Finding(
            "route_dir",
            f"{t.route_dir} is not writable by {_user()}: new routes cannot be written",
            f"give that user write access (host setup gives it to the `moorage` user; "
            f"deploy/systemd/moorage.service lists it in ReadWritePaths), {where}",
        )
    return Finding("route_dir", OK)
