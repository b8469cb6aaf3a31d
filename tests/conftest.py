"""Fixtures shared by every test: a real control plane on a real SQLite file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from control.app import app_shape, attach, build_app, create_app
from control.bootstrap import bootstrap
from control.settings import Settings
from control.store import migrate
from control.store.database import Store


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database at the head revision, made once; each test starts from a copy."""
    path = tmp_path_factory.mktemp("template") / "moorage.db"
    db = Store(f"sqlite:///{path}")
    migrate.upgrade(db.engine)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_database: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if not (data_dir / "moorage.db").exists():
        shutil.copyfile(migrated_database, data_dir / "moorage.db")  # startup migrations find it at head
    return Settings(data_dir=data_dir, base_domain="apps.test", log_level="info")


_SHARED_APPS: dict[tuple[object, ...], Litestar] = {}


@pytest.fixture
def app(request: pytest.FixtureRequest, settings: Settings) -> Litestar:
    """The control plane on fresh services (this test's database and data dir). Building the
    Litestar app takes longer than most tests, so tests whose settings give the same app
    share one; a test that changes the app itself (``app.register``) is marked ``own_app``."""
    if request.node.get_closest_marker("own_app"):
        return create_app(settings)
    shape = app_shape(settings)
    if shape not in _SHARED_APPS:
        _SHARED_APPS[shape] = build_app(settings)
    return attach(_SHARED_APPS[shape], bootstrap(settings))


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass
class Caller:
    """One API key's view of the API."""

    client: TestClient[Litestar]
    token: str
    key_id: str = ""
    tenant_id: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def operator(app: Litestar, client: TestClient[Litestar]) -> Caller:
    issued = app.state.services.keys.bootstrap_operator("test-operator")
    return Caller(client, issued.token, issued.key.id)


@pytest.fixture
def new_tenant(operator: Caller):
    """Factory: a tenant plus a key with the given scopes."""
    return tenant_maker(operator)


@pytest.fixture
def tenant(new_tenant) -> Caller:
    return new_tenant("acme", ["admin", "inference"])


def tenant_maker(operator: Caller):
    """``make(name, scopes)``: a tenant plus a key with those scopes, made through the API."""

    def make(name: str, scopes: list[str] | None = None) -> Caller:
        tenant = operator.post("/v1/tenants", json={"name": name})
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        key = operator.post(f"/v1/tenants/{tenant_id}/keys", json={"scopes": scopes or ["admin"], "name": "test"})
        assert key.status_code == 201, key.text
        return Caller(operator.client, key.json()["token"], key.json()["id"], tenant_id)

    return make


def environment_without_container(alpha: Caller) -> str:
    """An environment of alpha as the API records it while it starts: exec and files answer 409
    before any call to Docker."""
    from datetime import timedelta

    from control.clock import utcnow
    from control.ids import new_id
    from control.store.models import EnvironmentRow
    from control.store.repositories.environments import EnvironmentRepository

    services = alpha.client.app.state.services
    env_id, now = new_id("env"), utcnow()
    with services.db.write() as session:
        EnvironmentRepository(session, alpha.tenant_id).add(
            EnvironmentRow(
                id=env_id,
                tenant_id=alpha.tenant_id,
                image="moorage/busybox:latest",
                with_app_env=False,
                status="starting",
                millicpus=100,
                memory_mb=64,
                lease_expires_at=now + timedelta(days=1),
                lifetime_ends_at=now + timedelta(days=1),
            )
        )
    return env_id


@dataclass(frozen=True)
class WorldSnapshot:
    """A world some tests share, made once through the API: its data directory (database,
    master keys) and what its builder returned. Each test runs on a copy of the directory
    (``copy_to``), so what one test's calls change, no other test sees; ``Caller``s in the
    result are bound to the test's client with ``dataclasses.replace(caller, client=...)``."""

    data_dir: Path
    made: Any

    def copy_to(self, tmp_path: Path) -> Path:
        data_dir = tmp_path / "data"
        shutil.copytree(self.data_dir, data_dir)
        return data_dir


def snapshot_world(directory: Path, migrated_database: Path, settings_for: Any, build: Any) -> WorldSnapshot:
    """Run ``build(operator, new_tenant)`` once on an app of its own over ``settings_for(data_dir)``."""
    data_dir = directory / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(migrated_database, data_dir / "moorage.db")
    app = create_app(settings_for(data_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        issued = app.state.services.keys.bootstrap_operator("test-operator")
        operator = Caller(client, issued.token, issued.key.id)
        made = build(operator, tenant_maker(operator))
    with app.state.services.db.engine.connect() as connection:  # every page in the file, for copying
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    app.state.services.db.dispose()
    return WorldSnapshot(data_dir, made)


def shared_world(label: str, settings_for: Any, build: Any) -> tuple[Any, Any]:
    """The fixtures of a module whose tests share one world: ``world_snapshot`` (made once for
    the module) and ``settings`` (each test's copy of it). Assign them to those names."""

    @pytest.fixture(scope="module")
    def world_snapshot(tmp_path_factory: pytest.TempPathFactory, migrated_database: Path) -> WorldSnapshot:
        return snapshot_world(tmp_path_factory.mktemp(label), migrated_database, settings_for, build)

    @pytest.fixture
    def settings(tmp_path: Path, world_snapshot: WorldSnapshot) -> Settings:
        return settings_for(world_snapshot.copy_to(tmp_path))

    return world_snapshot, settings
