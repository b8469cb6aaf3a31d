"""The warm pool on the runtime port's fake: what it serves and what it leaves to a cold start,
refills after each claim and never holds more than its size, survives a restart, cleans up
after a setting that changed; environments made from it through the API; the reserved tenant
names its containers are labelled with. tests/e2e/test_environment_pool.py runs it on Docker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from litestar import Litestar

from control.jobs.environment_pool import PoolConfig, PoolConfigError, WarmPool, parse_pool_sizes
from control.jobs.environments import Sandboxes
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.runtime_port import EnvironmentSpec
from tests.conftest import Caller

BASE = "moorage/python:3-bookworm"
BUSYBOX = "moorage/busybox:latest"
IMAGES = (BASE, BUSYBOX)
CONFIG = PoolConfig(sizes={BASE: 2}, millicpus=1000, memory_mb=1024, refill_s=0.05)


def spec(n: int = 1, **changes: object) -> EnvironmentSpec:
    return replace(EnvironmentSpec(f"env_{n:012x}", "acme", BASE, 1000, 1024), **changes)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> InMemoryAppRuntime:
    return InMemoryAppRuntime()


def test_pool_sizes_are_read_from_image_count_entries() -> None:
    assert parse_pool_sizes(f" {BASE}=2 , {BUSYBOX}=0,", IMAGES) == {BASE: 2}
    assert parse_pool_sizes("", IMAGES) == {}
    with pytest.raises(PoolConfigError, match="not image=count"):
        parse_pool_sizes(f"{BASE}:2", IMAGES)
    with pytest.raises(PoolConfigError, match="not image=count"):
        parse_pool_sizes(f"{BASE}=two", IMAGES)
    with pytest.raises(PoolConfigError, match="not an environment image"):
        parse_pool_sizes("moorage/postgres:15=1", IMAGES)


def test_a_pass_fills_the_pool_to_its_size_and_a_second_adds_nothing(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, CONFIG)
    assert len(pool.refill_once().started) == 2
    assert pool.refill_once().started == []
    assert fake.pool_starts == 2 and pool.ready() == {BASE: 2}


def test_an_environment_claims_a_pooled_container_and_the_pool_refills(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, CONFIG)
    pool.refill_once()
    pooled_ids = {p.container_id for p in fake.pooled_environments()}
    claimed = pool.take(spec())
    assert claimed is not None and claimed.id in pooled_ids
    assert claimed.name == "moorage-env_000000000001" and claimed.tenant == "acme"
    assert pool.ready() == {BASE: 1} and pool.claims == 1
    pool.refill_once()
    assert pool.ready() == {BASE: 2} and fake.pool_starts == 3
    assert claimed.id not in {p.container_id for p in fake.pooled_environments()}


@pytest.mark.parametrize(
    "other",
    [
        {"image": BUSYBOX},  # not pooled
        {"millicpus": 500},  # another size than the pool's
        {"memory_mb": 256},
        {"env": {"DATABASE_URL": "postgres://x"}},  # a running container's env cannot change
    ],
)
def test_what_the_pool_cannot_serve_is_left_to_a_cold_start(fake: InMemoryAppRuntime, other: dict[str, object]) -> None:
    pool = WarmPool(fake, CONFIG)
    pool.refill_once()
    assert pool.take(spec(**other)) is None
    assert pool.ready() == {BASE: 2} and pool.claims == pool.misses == 0


def test_an_empty_pool_is_a_miss_and_a_claim_someone_else_won_is_skipped(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, CONFIG)
    assert pool.take(spec()) is None and pool.misses == 1
    pool.refill_once()
    _, second = fake.pooled_environments()
    other = WarmPool(fake, CONFIG)  # another process on the same engine
    other.refill_once()
    assert other.take(spec(7)) is not None  # claims `first`
    claimed = pool.take(spec(8))
    assert claimed is not None and claimed.id == second.container_id
    assert pool.take(spec(9)) is None  # both gone: a cold start


def test_claims_and_refills_at_once_never_hold_more_than_the_size(fake: InMemoryAppRuntime) -> None:
    fake.pool_start_delay_s = 0.01
    pool = WarmPool(fake, CONFIG)
    pool.start()
    try:
        with ThreadPoolExecutor(max_workers=6) as workers:
            taken = list(workers.map(lambda n: pool.take(spec(n)), range(1, 31)))
        deadline = time.monotonic() + 5
        while pool.ready() != {BASE: 2} and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pool.stop()
    served = [t for t in taken if t is not None]
    assert pool.ready() == {BASE: 2}
    assert fake.max_pooled <= 2
    assert len({t.id for t in served}) == len(served) == pool.claims  # no container served two environments
    assert pool.claims + pool.misses == 30


def test_a_restarted_pool_serves_what_the_last_one_left_and_a_changed_setting_cleans_up(fake: InMemoryAppRuntime) -> None:
    WarmPool(fake, CONFIG).refill_once()
    again = WarmPool(fake, CONFIG)
    assert again.refill_once().started == [] and again.ready() == {BASE: 2}
    smaller = WarmPool(fake, replace(CONFIG, sizes={BASE: 1}))
    assert len(smaller.refill_once().removed) == 1
    resized = WarmPool(fake, replace(CONFIG, memory_mb=512))
    report = resized.refill_once()
    assert len(report.removed) == 1 and len(report.started) == 2  # the old size's container replaced
    gone = WarmPool(fake, replace(CONFIG, sizes={}))
    assert len(gone.refill_once().removed) == 2 and fake.pooled_environments() == []


def test_a_stopped_pooled_container_is_replaced(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, CONFIG)
    pool.refill_once()
    name = next(iter(fake.pooled))
    pooled, pooled_spec = fake.pooled[name]
    fake.pooled[name] = (replace(pooled, running=False), pooled_spec)
    report = pool.refill_once()
    assert report.removed == [name] and len(report.started) == 1 and pool.ready() == {BASE: 2}


def test_a_failing_start_is_reported_and_retried(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, CONFIG)
    fake.environment_start_failure = "no such image"
    assert pool.refill_once().failed and pool.status().last_failure is not None
    fake.environment_start_failure = None
    assert len(pool.refill_once().started) == 2 and pool.status().last_failure is None


# -- through the API ---------------------------------------------------------------------------
@pytest.fixture
def pooled(app: Litestar, fake: InMemoryAppRuntime) -> WarmPool:
    sandboxes: Sandboxes = app.state.services.environments
    sandboxes.runtime = fake
    config = sandboxes.config
    pool = WarmPool(fake, PoolConfig({BASE: 1}, config.millicpus_default, config.memory_mb_default, refill_s=0))
    sandboxes.pool = pool
    pool.refill_once()
    return pool


def test_an_environment_of_the_default_size_is_made_from_the_pool_and_works(
    tenant: Caller, pooled: WarmPool, fake: InMemoryAppRuntime
) -> None:
    (ready,) = fake.pooled_environments()
    made = tenant.post("/v1/environments", json={"image": BASE})
    assert made.status_code == 201, made.text
    env = made.json()
    assert pooled.claims == 1 and fake.environment_of(env["id"]) is not None
    assert fake.environment_of(env["id"]).id == ready.container_id  # type: ignore[union-attr]
    ran = tenant.post(f"/v1/environments/{env['id']}/exec", json={"command": ["echo", "warm"]})
    assert ran.status_code == 200 and ran.json()["stdout"] == "warm" and ran.json()["exit_code"] == 0
    assert tenant.delete(f"/v1/environments/{env['id']}").status_code in (200, 204)
    assert fake.environment_of(env["id"]) is None


def test_an_environment_of_another_size_starts_cold_and_leaves_the_pool(
    tenant: Caller, pooled: WarmPool, fake: InMemoryAppRuntime
) -> None:
    made = tenant.post("/v1/environments", json={"image": BASE, "memory_mb": 256})
    assert made.status_code == 201, made.text
    assert pooled.claims == 0 and pooled.ready() == {BASE: 1} and len(fake.pooled) == 1


def test_operator_health_shows_the_pool(operator: Caller, pooled: WarmPool, app: Litestar) -> None:
    app.state.services.operator_health.pool = pooled.status
    body = operator.get("/v1/operator/health").json()
    component = body["components"]["environment_pool"]
    assert component["status"] == "ok" and f"{BASE}: 1 of 1 ready" in component["figure"]


@pytest.mark.parametrize("name", ["moorage-pool", "moorage-x"])
def test_tenant_names_the_platform_labels_its_own_objects_with_are_refused(operator: Caller, name: str) -> None:
    response = operator.post("/v1/tenants", json={"name": name})
    assert response.status_code == 422, response.text
    assert "moorage-" in response.json()["detail"]
    assert all(t["name"] != name for t in operator.get("/v1/tenants").json()["items"])


def test_the_pool_thread_stops_promptly(fake: InMemoryAppRuntime) -> None:
    pool = WarmPool(fake, replace(CONFIG, refill_s=30))
    pool.start()
    time.sleep(0.1)
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name == "moorage-environment-pool"]
