"""A real dependency that refuses connections, behind a real CircuitBreaker: the API fails
fast with 503 + Retry-After, writes nothing, and /readyz and /metrics show the state."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, post
from litestar.di import NamedDependency
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from control.app import create_app
from control.bootstrap import bootstrap
from control.domain.apps import AppService
from control.settings import Settings
from control.store.models import AppRow, IdempotencyRecordRow
from runtime.resilience import (
    NO_RETRY,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    Guard,
)
from tests.conftest import Caller
from tests.control.test_problems import assert_problem

RESET_S = 30.0


class ManualClock:
    """The breaker's clock, moved by hand: no sleeps, no timing flakes on a loaded machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> BreakerRegistry:
    return BreakerRegistry()  # this app's breakers only, whatever other tests registered


@pytest.fixture
def app(settings: Settings, registry: BreakerRegistry) -> Litestar:
    return create_app(settings, services=bootstrap(settings, breakers=registry))


@pytest.fixture
def refusing_port() -> int:
    """A loopback port nobody listens on: bind one, then close it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def attempts() -> list[int]:
    return []


@pytest.fixture
def guard(
    app: Litestar, registry: BreakerRegistry, refusing_port: int, clock: ManualClock, attempts: list[int]
) -> Iterator[Guard]:
    breaker = CircuitBreaker("probe-dependency", failure_threshold=2, reset_timeout=RESET_S, registry=registry, clock=clock)
    guard = Guard(breaker, NO_RETRY)

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        attempts.append(1)  # a real connection attempt to the dependency
        return socket.create_connection(address, timeout=timeout)

    @post("/v1/test-dependency", opt={"access": "deploy"}, status_code=201, sync_to_thread=True)
    def create_through_dependency(request: Request[Any, Any, Any], apps: NamedDependency[AppService]) -> dict[str, str]:
        # Talk to the dependency first, write second: an open breaker leaves nothing half-done.
        connection = guard.call(connect, ("127.0.0.1", refusing_port), timeout=2)
        connection.close()
        app_record = apps.create(request.user.tenant_id, "made-after-dependency")
        return {"id": app_record.id}

    app.register(create_through_dependency)
    yield guard


def _count(app: Litestar, model: Any) -> int:
    with app.state.services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _breaker_metric(operator: Caller) -> dict[str, float]:
    text = operator.get("/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "moorage_circuit_breaker_state")
    return {sample.labels["breaker"]: sample.value for sample in family.samples}


def test_open_breaker_answers_503_and_writes_nothing(
    app, client, guard: Guard, clock: ManualClock, attempts: list[int], operator: Caller, tenant: Caller, refusing_port: int
) -> None:
    headers = {"Idempotency-Key": "through-dependency"}
    assert client.get("/readyz").json()["breakers"] == {"probe-dependency": "closed"}
    assert _breaker_metric(operator) == {"probe-dependency": 0.0}

    for _ in range(2):  # the dependency refuses: a clear 503 already, and the failures count toward the threshold
        unreachable = tenant.post("/v1/test-dependency", json={}, headers=headers)
        assert "not accepting connections" in assert_problem(unreachable, 503, "dependency-unavailable")["detail"]
        assert unreachable.headers["retry-after"] == "5"
    assert len(attempts) == 2
    clock.now += 10
    refused = tenant.post("/v1/test-dependency", json={}, headers=headers)
    body = assert_problem(refused, 503, "dependency-unavailable")
    assert len(attempts) == 2  # failed fast: the dependency was not even tried
    assert refused.headers["retry-after"] == "20"  # the breaker's own retry_after
    assert "probe-dependency" in body["detail"]
    assert _count(app, AppRow) == 0
    assert _count(app, IdempotencyRecordRow) == 0  # 5xx is not kept: the same key may retry later

    ready = client.get("/readyz")
    assert ready.status_code == 200  # the database works; an open breaker degrades, it does not unready
    assert ready.json()["status"] == "degraded"
    assert ready.json()["breakers"] == {"probe-dependency": "open"}
    assert _breaker_metric(operator) == {"probe-dependency": 2.0}

    # The dependency comes back; after the reset timeout one trial call closes the breaker.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", refusing_port))
        listener.listen(8)
        clock.now += RESET_S
        assert client.get("/readyz").json()["breakers"] == {"probe-dependency": "half_open"}
        assert _breaker_metric(operator) == {"probe-dependency": 1.0}
        created = tenant.post("/v1/test-dependency", json={}, headers=headers)
        assert created.status_code == 201, created.text
    ready = client.get("/readyz").json()
    assert ready["breakers"] == {"probe-dependency": "closed"} and ready["checks"]["database"] == "ok"
    assert ready["status"] == ("ready" if ready["checks"]["router"] == "ok" else "degraded")  # router: test_health_openapi
    assert _breaker_metric(operator) == {"probe-dependency": 0.0}
    assert _count(app, AppRow) == 1
    replay = tenant.post("/v1/test-dependency", json={}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == created.json()


@pytest.mark.own_app
def test_any_circuit_open_error_maps_to_503(app, tenant: Caller) -> None:
    @post("/v1/test-open", opt={"access": "read"}, sync_to_thread=False)
    def always_open() -> None:
        raise CircuitOpenError("docker", 12.2)

    app.register(always_open)
    response = tenant.post("/v1/test-open")
    body = assert_problem(response, 503, "dependency-unavailable")
    assert response.headers["retry-after"] == "13"  # rounded up: never early
    assert "docker" in body["detail"] and "ratelimit" in response.headers


def test_readyz_lists_the_default_registry_when_none_is_given(tmp_path: Path) -> None:
    from runtime.resilience import default_registry

    settings = Settings(data_dir=tmp_path / "d")
    breaker = CircuitBreaker("default-registry-probe", registry=default_registry)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["breakers"]["default-registry-probe"] == "closed"
    assert breaker.state.value == "closed"
