"""End-to-end fixtures: the real control plane (in-process, its workers and reconciler
running) against the real Docker engine, runsc and a test Traefik on a loopback port.
Everything created carries the run's unique tenant name and is removed at teardown."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import create_app
from control.settings import Settings
from runtime.traefik import TraefikProcess
from runtime.volumes import LoopImages, volume_id_of
from tests.conftest import Caller
from tests.runtime.helpers import PYTHON, RUN_ID, SETUP_HINT, TRAEFIK_THROTTLE

TERMINAL = {"running", "failed", "cancelled"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def cleanup_tenant(tenant: str) -> None:
    client = docker.from_env()
    # All at once: each forced removal mostly waits for its own sandbox to stop.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for removal in [
            pool.submit(c.remove, force=True, v=True)
            for c in client.containers.list(all=True, filters={"label": f"moorage.tenant={tenant}"})
        ]:
            removal.result()
    for volume in client.volumes.list(filters={"label": f"moorage.tenant={tenant}"}):
        remove_volume_storage(volume.attrs)
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)
    for n in client.networks.list(names=[f"moorage-t-{tenant}"]):
        if n.name == f"moorage-t-{tenant}":
            n.remove()
    for n in client.networks.list(filters={"label": [f"moorage.tenant={tenant}", "moorage.role=build-network"]}):
        with contextlib.suppress(docker.errors.APIError):  # a build's own network, left by a cut-off build
            n.remove()
    for i in client.api.images(filters={"label": f"moorage.tenant={tenant}"}):  # summaries: no inspect race
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(i["Id"], force=True)
    client.close()


def remove_volume_storage(volume: dict[str, object]) -> None:
    """An enforced app volume's image file and loop devices (its Docker volume names them by the
    link beside the image): what a host keeps attached until someone detaches it."""
    options = volume.get("Options") or {}
    device = options.get("device") if isinstance(options, dict) else None
    volume_id = volume_id_of(str(volume.get("Name", "")))
    if not device or volume_id is None:
        return
    LoopImages(Path(str(device)).parent).remove(volume_id)


@pytest.fixture(scope="session")
def traefik() -> Iterator[TraefikProcess]:
    try:
        docker.from_env().images.get(PYTHON)
    except Exception as exc:
        pytest.fail(f"Docker or {PYTHON} unavailable ({exc}): {SETUP_HINT}", pytrace=False)
    try:
        proc = TraefikProcess(throttle=TRAEFIK_THROTTLE).start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        pytest.fail(f"could not start Traefik ({exc}): {SETUP_HINT}", pytrace=False)
    yield proc
    proc.stop()


def e2e_settings(data_dir: Path, traefik: TraefikProcess, **overrides: object) -> Settings:
    base = dict(
        data_dir=data_dir,
        base_domain="apps.test",
        traefik_dynamic_dir=traefik.dynamic_dir,
        traefik_url=traefik.url,
        reconcile_interval_s=2,
        health_timeout_s=20,
        swap_drain_ms=500,
        build_timeout_s=300,
        job_lease_s=10,
        # API rate limits are tested in tests/control; here they would only throttle polling loops.
        rate_limit_key_quota=100_000,
        rate_limit_tenant_quota=100_000,
        # The host's bundle holds the CA of the TLS-intercepting proxy HTTPS goes through here:
        # builds and apps trust it as an operator behind such a proxy would configure it.
        build_ca_bundle=str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else "",
    )
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


class Platform:
    def __init__(
        self, app: Litestar, client: TestClient[Litestar], tenant: Caller, tenant_name: str, traefik: TraefikProcess
    ) -> None:
        self.app, self.client, self.tenant, self.tenant_name, self.traefik = app, client, tenant, tenant_name, traefik

    def host(self, app: str) -> str:
        return f"{app}.{self.tenant_name}.apps.test"

    def deploy(self, app: str, archive: bytes) -> str:
        r = self.tenant.post(f"/v1/apps/{app}/deployments", content=archive, headers={"Content-Type": "application/gzip"})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait(self, app: str, deployment: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            body = self.tenant.get(f"/v1/apps/{app}/deployments/{deployment}").json()
            if body["status"] in TERMINAL:
                return body
            time.sleep(0.2)
        raise AssertionError(f"deployment never finished: {body}")

    def get(self, app: str, timeout: float = 2.0) -> httpx.Response:
        return httpx.get(self.traefik.url + "/", headers={"Host": self.host(app)}, timeout=timeout)


@pytest.fixture(scope="module")
def platform(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tenant_name = f"e2e-{RUN_ID}"
    app = create_app(e2e_settings(tmp_path_factory.mktemp("e2e-data"), traefik))
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            issued = app.state.services.keys.bootstrap_operator("e2e")
            operator = Caller(client, issued.token)
            tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "e2e"}).json()
            yield Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik)
    finally:
        cleanup_tenant(tenant_name)
