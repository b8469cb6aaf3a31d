"""Metered usage through the API, the sampler on the runtime port's fake (tests/e2e/test_metering_e2e.py
runs real runsc containers): compute, storage and builds per tenant by hour, a restarted container
neither resetting nor doubling its counters, who may read which kind, the operator's view of
every tenant, the inference shape unchanged by default, and the per-tenant Prometheus series."""

from __future__ import annotations

import time
from typing import Any

import pytest
from litestar import Litestar

from control.domain.metering import CounterTracker
from control.jobs.metering import Sampler
from control.jobs.runtime_fake import IMAGE_BYTES, InMemoryAppRuntime
from tests.conftest import Caller

MiB = 2**20


@pytest.fixture
def fake() -> InMemoryAppRuntime:
    runtime = InMemoryAppRuntime()
    runtime.images["img_1"] = "moorage-apps/none/web:dep_1"
    return runtime


@pytest.fixture
def sampler(app: Litestar, fake: InMemoryAppRuntime) -> Sampler:
    """The app's own sampler (what /metrics reads), reading the fake; passes run when a test says."""
    made: Sampler = app.state.services.sampler
    made.stop()
    made.runtime = fake
    made._last_storage = None
    made.tracker = CounterTracker(started=time.time() - 1)
    return made


def _start(fake: InMemoryAppRuntime, tenant: str = "acme") -> str:
    return fake.start_app(tenant=tenant, app="web", release="v1", image="img_1", env={"PORT": "8080"}, name=f"{tenant}-web").id


def _usage(caller: Caller, kind: str, path: str = "/v1/usage") -> dict[str, Any]:
    r = caller.get(f"{path}?kind={kind}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["kind"] == kind
    return body


def test_cpu_and_memory_of_a_tenants_containers_show_by_hour(tenant: Caller, fake: InMemoryAppRuntime, sampler: Sampler) -> None:
    container = _start(fake)
    fake.use(container, cpu_seconds=5.0, memory_bytes=200 * MiB, net_rx_bytes=1000, net_tx_bytes=300)
    sampler.run_once()
    fake.use(container, memory_bytes=20 * MiB)
    sampler.run_once()
    body = _usage(tenant, "compute")
    totals = body["totals"]
    assert totals["cpu_seconds"] == pytest.approx(5.0)
    assert totals["memory_peak_bytes"] >= 200 * MiB
    assert (totals["net_rx_bytes"], totals["net_tx_bytes"], totals["block_read_bytes"]) == (1000, 300, 0)
    [hour] = body["items"]
    assert hour["hour"].endswith(":00:00Z") and "tenant_id" not in hour
    assert hour["cpu_seconds"] == pytest.approx(5.0)


def test_a_restarted_container_neither_resets_nor_doubles_its_counters(
    tenant: Caller, fake: InMemoryAppRuntime, sampler: Sampler
) -> None:
    container = _start(fake)
    fake.use(container, cpu_seconds=3.0)
    sampler.run_once()
    fake.stop(container)
    time.sleep(0.01)
    fake.restart(container)  # counters from 0 again, same container id
    fake.use(container, cpu_seconds=1.0)
    sampler.run_once()
    fake.use(container, cpu_seconds=0.5)
    sampler.run_once()
    assert _usage(tenant, "compute")["totals"]["cpu_seconds"] == pytest.approx(4.5)


def test_storage_counts_images_and_backups_per_tenant(
    app: Litestar, tenant: Caller, fake: InMemoryAppRuntime, sampler: Sampler
) -> None:
    fake.images["img_2"] = f"moorage-apps/{tenant.tenant_id}/web:dep_2"
    _start(fake)  # the fake has started something: the engine is asked
    backups = app.state.services.settings.data_dir / "backups" / str(tenant.tenant_id) / "db_1"
    backups.mkdir(parents=True)
    (backups / "one.dump").write_bytes(b"x" * 4096)
    sampler.run_once()
    totals = _usage(tenant, "storage")["totals"]
    assert totals["images"]["peak_bytes"] == IMAGE_BYTES
    assert totals["backups"]["peak_bytes"] == 4096
    assert totals["volumes"] == {"byte_hours": 0.0, "peak_bytes": 0}


def test_builds_count_their_seconds(tenant: Caller, sampler: Sampler) -> None:
    now = time.time()
    sampler.record_build(str(tenant.tenant_id), now - 12.5, now)
    body = _usage(tenant, "builds")
    assert body["totals"] == {"build_seconds": pytest.approx(12.5), "builds": 1}
    assert body["deployments"] == []  # none made through the API here


def test_inference_stays_the_default_shape_and_keys_read_what_their_scopes_allow(new_tenant: Any) -> None:
    reader = new_tenant("acme", ["read"])
    model_caller = new_tenant("beta", ["inference"])
    default = model_caller.get("/v1/usage").json()
    assert set(default) >= {"kind", "since", "until", "items", "totals"} and default["kind"] == "inference"
    assert set(default["totals"]) == {"requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"}
    refused = model_caller.get("/v1/usage?kind=compute")
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient-scope"
    assert reader.get("/v1/usage?kind=compute").status_code == 200
    assert reader.get("/v1/usage").status_code == 200
    bad = reader.get("/v1/usage?kind=gpu")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "kind"


def test_operators_see_every_tenant_by_hour_and_filter_one(
    operator: Caller, new_tenant: Any, fake: InMemoryAppRuntime, sampler: Sampler
) -> None:
    alpha, beta = new_tenant("alpha"), new_tenant("beta")
    for name, cpu in (("alpha", 2.0), ("beta", 3.0)):
        fake.use(_start(fake, name), cpu_seconds=cpu)
    sampler.run_once()
    everyone = _usage(operator, "compute", "/v1/operator/usage")
    assert {i["tenant_id"]: i["cpu_seconds"] for i in everyone["items"]} == {alpha.tenant_id: 2.0, beta.tenant_id: 3.0}
    only = operator.get(f"/v1/operator/usage?kind=compute&tenant_id={beta.tenant_id}").json()
    assert only["totals"]["cpu_seconds"] == 3.0
    assert _usage(alpha, "compute")["totals"]["cpu_seconds"] == 2.0  # a tenant sees its own only
    assert alpha.get("/v1/operator/usage?kind=compute").status_code == 403


def test_prometheus_has_per_tenant_series(operator: Caller, tenant: Caller, fake: InMemoryAppRuntime, sampler: Sampler) -> None:
    fake.use(_start(fake), cpu_seconds=1.25, memory_bytes=MiB)
    sampler.run_once()
    sampler.record_build(str(tenant.tenant_id), time.time() - 2, time.time())
    text = operator.get("/metrics").text
    assert f'moorage_tenant_cpu_seconds_total{{tenant="{tenant.tenant_id}"}} 1.25' in text
    assert f'moorage_tenant_memory_bytes{{tenant="{tenant.tenant_id}"}} 1.048576e+06' in text
    assert f'moorage_tenant_builds_total{{tenant="{tenant.tenant_id}"}} 1.0' in text
