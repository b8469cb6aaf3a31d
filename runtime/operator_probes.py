"""Probes of the host for operators (``GET /v1/operator/health``): each measures one thing
and returns a figure, or raises ``ProbeFailed`` saying what went wrong. Unlike
``runtime.host_check`` (is the host set up?), these say how it is doing: disk space left,
the engine's version, how long a sandboxed container takes to run, whether Traefik answers.

Like the host checks they use their own short-timeout Docker client, outside the ``docker``
circuit breaker: a probe must neither open the breaker real calls share nor be answered by it.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors
import httpx

from runtime.settings import RuntimeSettings

SMOKE_IMAGE = "moorage/busybox:latest"  # host setup builds it; nothing is pulled


class ProbeFailed(Exception):
    """What went wrong, in words an operator can act on."""


@dataclass(frozen=True)
class DiskFree:
    path: Path
    free_bytes: int  # available to unprivileged writers (statvfs f_bavail)
    total_bytes: int

    @property
    def free_pct(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class DockerFacts:
    version: str
    root_dir: Path
    answer_s: float


def disk_free(path: Path) -> DiskFree:
    """Free space on the filesystem holding ``path`` (its nearest existing ancestor)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError as exc:
        raise ProbeFailed(f"cannot stat {path}: {exc.strerror or exc}") from None
    return DiskFree(path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def _client(docker_url: str, timeout_s: float) -> docker.DockerClient:
    try:
        return docker.DockerClient(
            base_url=docker_url, timeout=max(1, round(timeout_s)), version=RuntimeSettings().docker_api_version
        )
    except docker.errors.DockerException as exc:
        raise ProbeFailed(f"unusable Docker URL {docker_url!r}: {exc}") from None


def docker_facts(docker_url: str, *, timeout_s: float = 2.0) -> DockerFacts:
    started = time.monotonic()
    client = _client(docker_url, timeout_s)
    try:
        version = client.version()
        info = client.info()
    except Exception as exc:  # reported, not raised as is: a probe always answers in words
        raise ProbeFailed(f"no answer from the Docker engine at {docker_url}: {type(exc).__name__}") from None
    finally:
        client.close()
    return DockerFacts(str(version.get("Version", "?")), Path(str(info.get("DockerRootDir", ""))), time.monotonic() - started)


def sandbox_smoke(docker_url: str, runtime: str, *, image: str = SMOKE_IMAGE, timeout_s: float = 30.0) -> float:
    """Seconds to create, run and remove a container that does nothing under ``runtime``,
    with no network, no capabilities and a read-only root."""
    client = _client(docker_url, timeout_s)
    name = f"moorage-health-smoke-{secrets.token_hex(4)}"
    started = time.monotonic()
    try:
        container = client.containers.create(
            image,
            ["true"],
            name=name,
            runtime=runtime,
            network_mode="none",
            cap_drop=["ALL"],
            read_only=True,
            security_opt=["no-new-privileges"],
            mem_limit=64 * 1024 * 1024,
            pids_limit=64,  # gVisor's own sandbox processes count too: 16 is too few to start
        )
        try:
            container.start()
            result = container.wait(timeout=timeout_s)
        finally:
            container.remove(force=True)
    except docker.errors.ImageNotFound:
        raise ProbeFailed(f"the image {image} is missing: run `sudo bash deploy/host-setup.sh`") from None
    except docker.errors.APIError as exc:
        raise ProbeFailed(f"a container under {runtime!r} did not run: {exc.explanation or exc}") from None
    except Exception as exc:
        raise ProbeFailed(f"a container under {runtime!r} did not run: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    code = result.get("StatusCode")
    if code != 0:
        raise ProbeFailed(f"`true` under {runtime!r} exited {code}")
    return time.monotonic() - started


def tcp_connect(url_or_address: str, *, timeout_s: float = 1.0) -> float:
    """Seconds to open a TCP connection to ``http://host:port`` or ``host:port``."""
    split = urlsplit(url_or_address if "//" in url_or_address else f"//{url_or_address}")
    host = split.hostname or "127.0.0.1"
    port = split.port or (443 if split.scheme == "https" else 80)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return time.monotonic() - started
    except OSError as exc:
        raise ProbeFailed(f"nothing accepts connections at {host}:{port} ({exc.strerror or type(exc).__name__})") from None


def traefik_ping(address: str, *, timeout_s: float = 1.0) -> float:
    """Seconds for Traefik's ``/ping`` at ``host:port`` to answer 200."""
    started = time.monotonic()
    try:
        response = httpx.get(f"http://{address}/ping", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ProbeFailed(f"no answer from Traefik's ping at {address}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ProbeFailed(f"Traefik's ping at {address} answered {response.status_code}")
    return time.monotonic() - started
