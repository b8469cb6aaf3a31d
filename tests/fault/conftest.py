"""Fault tests: each breaks a real dependency on purpose (restarts dockerd, kills Traefik or
the control plane with SIGKILL, fills the build disk quota) and checks that nothing is lost
or duplicated, that clients see clear errors meanwhile, and that moorage recovers by itself.

Every test here is marked ``fault``, ``docker`` and ``slow``; they run in the default suite
(and so in CI) and alone with ``pytest -m fault``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings, traefik  # noqa: F401 (fixture)
from tests.runtime.helpers import RUN_ID

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            for mark in (pytest.mark.fault, pytest.mark.docker, pytest.mark.slow):
                item.add_marker(mark)


PlatformFactory = Callable[..., AbstractContextManager[Platform]]


@pytest.fixture
def make_platform(tmp_path: Path) -> PlatformFactory:
    """``with make_platform(label, traefik, **settings) as p``: the real control plane
    in-process (workers, reconciler) for a fresh tenant; its containers are removed after."""

    @contextmanager
    def make(label: str, traefik_process: TraefikProcess, **overrides: object) -> Iterator[Platform]:
        tenant_name = f"{label}-{RUN_ID}"
        app = create_app(e2e_settings(tmp_path / f"data-{label}", traefik_process, **overrides))
        try:
            with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
                operator = Caller(client, app.state.services.keys.bootstrap_operator("fault").token)
                tenant = operator.post("/v1/tenants", json={"name": tenant_name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "fault"}).json()
                yield Platform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), tenant_name, traefik_process)
        finally:
            cleanup_tenant(tenant_name)

    return make
