"""Fixtures for runtime tests against the real Docker engine, runsc and Traefik.

Nothing is skipped: when the engine, the runsc runtime or the base images are missing, the
tests that need them FAIL and say to run deploy/host-setup.sh. Everything created carries a
per-run label and unique tenant names, and is removed at teardown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.images import Images
from runtime.networks import TenantNetworks
from runtime.resilience import BreakerRegistry
from runtime.router import Router
from runtime.settings import RuntimeSettings
from runtime.traefik import TraefikProcess
from tests.runtime.helpers import (
    BUSYBOX,
    PYTHON,
    RUN_ID,
    RUN_LABEL,
    SETUP_HINT,
    TRAEFIK_THROTTLE,
)


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def runtime_settings(tmp_path_factory: pytest.TempPathFactory) -> RuntimeSettings:
    return RuntimeSettings(
        docker_url=os.environ.get("MOORAGE_DOCKER_URL", RuntimeSettings.docker_url),
        base_domain="apps.test",
        breaker_reset_timeout=5.0,
        traefik_dynamic_dir=tmp_path_factory.mktemp("dynamic"),
    )


@pytest.fixture(scope="session")
def engine(runtime_settings: RuntimeSettings) -> Iterator[DockerEngine]:
    eng = DockerEngine(runtime_settings, registry=BreakerRegistry())
    problem = None
    try:
        eng.ping()
    except Exception as exc:  # failed outside the handler: one clear line, no chained traceback
        problem = f"Docker engine unavailable at {runtime_settings.docker_url} ({exc}): {SETUP_HINT}"
    if problem:
        pytest.fail(problem, pytrace=False)
    health = eng.health()
    if not health.ok:
        pytest.fail(f"Docker engine not ready: {health.error}: {SETUP_HINT}", pytrace=False)
    for image in (BUSYBOX, PYTHON):
        try:
            eng.client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"base image {image} missing: {SETUP_HINT}", pytrace=False)
    yield eng
    _cleanup(eng)
    eng.close()


def _cleanup(eng: DockerEngine) -> None:
    client = eng.client
    for c in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        c.remove(force=True, v=True)
    for n in client.networks.list(filters={"label": "moorage.managed=true"}):
        if RUN_ID in (n.name or ""):
            n.remove()
    for i in client.api.images(filters={"label": f"{RUN_LABEL}={RUN_ID}"}):  # summaries: no inspect race
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(i["Id"], force=True)


@pytest.fixture(scope="session")
def containers(engine: DockerEngine) -> Containers:
    return Containers(engine)


@pytest.fixture(scope="session")
def networks(engine: DockerEngine) -> TenantNetworks:
    return TenantNetworks(engine)


@pytest.fixture(scope="session")
def images(engine: DockerEngine) -> Images:
    return Images(engine)


@pytest.fixture(scope="session")
def traefik(runtime_settings: RuntimeSettings, engine: DockerEngine) -> Iterator[TraefikProcess]:
    """Our own Traefik on a free loopback port, same static config generator as host-setup."""
    try:
        proc = TraefikProcess(dynamic_dir=Path(runtime_settings.traefik_dynamic_dir), throttle=TRAEFIK_THROTTLE).start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        pytest.fail(f"could not start Traefik ({exc}): {SETUP_HINT}", pytrace=False)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def router(runtime_settings: RuntimeSettings) -> Router:
    return Router(runtime_settings, registry=BreakerRegistry())
