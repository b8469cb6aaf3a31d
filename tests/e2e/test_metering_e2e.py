"""Metering against the real engine under runsc: an app that burns 5 CPU-seconds shows 4-6 more
in ``GET /v1/usage?kind=compute``; one that holds 200 MiB shows a peak of at least 190 MiB; a
container restarted behind the control plane's back (same id, counters from 0 under runsc)
neither resets nor doubles its tenant's total; a one-off run's CPU counts too; a deployment's
build seconds match its build log's timestamps within 10%; images count as storage; and
/metrics carries the tenant's series. The sampler reads every second here."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import BASE, tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
TENANT = f"met-{RUN_ID}"
APP = "burn"
MiB = 2**20
BUILD_SLEEP_S = 10  # long enough that the log's whole-second timestamps are within 10%

BURN_APP = """\
import http.server, os, threading, time
spinning = threading.Event()
def spin():
    while spinning.is_set():
        pass
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/spin/start":
            spinning.set()
            threading.Thread(target=spin, daemon=True).start()
        elif self.path == "/spin/stop":
            spinning.clear()
        elif self.path.startswith("/hold/"):
            held = bytearray(int(self.path.rsplit("/", 1)[1]) * 2**20)
            for i in range(0, len(held), 4096):
                held[i] = 1  # touched: resident, not just reserved
            time.sleep(4)
            del held
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        pass
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""

DOCKERFILE = f"""\
FROM {BASE}
WORKDIR /app
RUN sleep {BUILD_SLEEP_S}
COPY app.py /app/app.py
CMD ["python3", "-u", "/app/app.py"]
"""


class MeteredPlatform(Platform):
    operator: Caller


@pytest.fixture(scope="module")
def platform(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredPlatform]:
    settings = e2e_settings(
        tmp_path_factory.mktemp("metering"), traefik, metering_interval_s=1.0, metering_storage_interval_s=2.0
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            issued = app.state.services.keys.bootstrap_operator("e2e")
            operator = Caller(client, issued.token)
            tenant = operator.post("/v1/tenants", json={"name": TENANT}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "e2e"}).json()
            made = MeteredPlatform(app, client, Caller(client, key["token"], key["id"], tenant["id"]), TENANT, traefik)
            made.operator = operator
            yield made
    finally:
        cleanup_tenant(TENANT)


@pytest.fixture(scope="module")
def deployed(platform: Platform) -> dict[str, Any]:
    assert platform.tenant.post("/v1/apps", json={"name": APP, "port": 8080}).status_code == 201
    dep = platform.deploy(APP, tar_gz({"app.py": BURN_APP, "Dockerfile": DOCKERFILE}))
    body = platform.wait(APP, dep, timeout=300)
    assert body["status"] == "running", body
    return body


def _call(platform: Platform, path: str) -> None:
    r = httpx.get(platform.traefik.url + path, headers={"Host": platform.host(APP)}, timeout=60)
    assert r.status_code == 200, r.text


def _compute(platform: Platform) -> dict[str, Any]:
    body: dict[str, Any] = platform.tenant.get("/v1/usage?kind=compute").json()
    return body["totals"]  # type: ignore[no-any-return]


def _settled(read: Callable[[], float], *, quiet_s: float = 3.0, timeout: float = 30.0) -> float:
    """The value once it has stopped changing for ``quiet_s`` (the sampler caught up)."""
    deadline, last, since = time.monotonic() + timeout, read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if abs(now - last) > 0.05:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


def _cpu(platform: Platform) -> float:
    return float(_compute(platform)["cpu_seconds"])


def _container() -> Any:
    [container] = docker.from_env().containers.list(filters={"label": [f"moorage.tenant={TENANT}", f"moorage.app={APP}"]})
    return container


def _kernel_cpu_s(container_id: str) -> float:
    """What the kernel charged the container's cgroup (the sandbox's, under runsc): the
    reference, read beside the engine rather than through it."""
    for path in (
        f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",  # v1, cgroupfs driver
        f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage",
    ):
        if Path(path).is_file():
            return int(Path(path).read_text()) / 1e9
    for path in (
        f"/sys/fs/cgroup/docker/{container_id}/cpu.stat",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat",
    ):
        if Path(path).is_file():  # v2
            usage = dict(line.split() for line in Path(path).read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    pytest.skip("no cgroup CPU accounting readable for the container on this host")


def _spin(platform: Platform, cpu_s: float) -> float:
    """The app spins until the kernel has charged it ``cpu_s`` CPU-seconds (a busy loop for a
    fixed wall time gets less on a loaded host); the CPU-seconds charged, as the kernel says."""
    container_id = _container().id
    start = _kernel_cpu_s(container_id)
    _call(platform, "/spin/start")
    deadline = time.monotonic() + 10 * cpu_s
    while _kernel_cpu_s(container_id) - start < cpu_s:
        assert time.monotonic() < deadline, "the app never got the CPU it asked for"
        time.sleep(0.05)
    _call(platform, "/spin/stop")
    time.sleep(0.2)
    return _kernel_cpu_s(container_id) - start


def test_five_cpu_seconds_burned_show_as_four_to_six(platform: Platform, deployed: dict[str, Any]) -> None:
    before = _settled(lambda: _cpu(platform))
    charged = _spin(platform, 5.0)
    after = _settled(lambda: _cpu(platform))
    print(f"metering: burned {charged:.2f} CPU-s (kernel) in the app -> +{after - before:.2f} CPU-s metered")
    assert 4.0 <= after - before <= 6.0
    assert abs((after - before) - charged) <= 0.1 * charged


def test_200_mib_held_shows_a_peak_of_at_least_190_mib(platform: Platform, deployed: dict[str, Any]) -> None:
    _call(platform, "/hold/200")
    time.sleep(1.5)
    peak = int(_compute(platform)["memory_peak_bytes"])
    print(f"metering: held 200 MiB -> peak {peak / MiB:.1f} MiB")
    assert peak >= 190 * MiB
    assert _compute(platform)["memory_byte_hours"] > 0


def test_a_restarted_container_neither_resets_nor_doubles_the_total(platform: Platform, deployed: dict[str, Any]) -> None:
    before = _settled(lambda: _cpu(platform))
    container = _container()
    started = container.attrs["State"]["StartedAt"]
    container.restart(timeout=2)
    container.reload()
    assert container.attrs["State"]["StartedAt"] != started
    _wait_serving(platform)
    since_start = _kernel_cpu_s(container.id)  # counters from 0 again: the new incarnation's start so far
    charged = since_start + _spin(platform, 2.0)
    after = _settled(lambda: _cpu(platform))
    print(f"metering: restart + {charged:.2f} CPU-s (kernel) -> {before:.2f} -> {after:.2f} CPU-s metered")
    assert after >= before + 0.9 * charged  # not reset
    assert after <= before + 1.1 * charged + 0.5  # not doubled: the old incarnation is not counted again


def test_a_one_off_runs_cpu_counts_too(platform: Platform, deployed: dict[str, Any]) -> None:
    before = _settled(lambda: _cpu(platform))
    script = "import time\nt=time.process_time()\nwhile time.process_time()-t<2: pass\ntime.sleep(3)"
    r = platform.tenant.post(f"/v1/apps/{APP}/runs", json={"command": ["python3", "-c", script], "timeout_s": 60})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    deadline = time.monotonic() + 90
    while platform.tenant.get(f"/v1/apps/{APP}/runs/{run_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.5)
    after = _settled(lambda: _cpu(platform))
    print(f"metering: a run burning 2 CPU-s (its own clock) -> +{after - before:.2f} CPU-s metered")
    assert 1.0 <= after - before <= 3.5  # under gVisor on a loaded host, the app's clock runs ahead of the kernel's


def test_build_seconds_match_the_build_logs_timestamps(platform: Platform, deployed: dict[str, Any]) -> None:
    builds = platform.tenant.get("/v1/usage?kind=builds").json()
    [build] = [b for b in builds["deployments"] if b["deployment_id"] == deployed["id"]]
    log = platform.tenant.get(f"/v1/apps/{APP}/deployments/{deployed['id']}/logs").text
    began = re.search(r"\[moorage (\d\d:\d\d:\d\d)\] building with", log)
    ended = re.search(r"\[moorage (\d\d:\d\d:\d\d)\] built \S+ in ([\d.]+)s", log)
    assert began and ended, log
    span = (_seconds(ended[1]) - _seconds(began[1])) % 86400
    print(f"metering: build {build['build_seconds']:.2f}s metered, log {span:.0f}s (timestamps), {ended[2]}s (its line)")
    assert build["build_seconds"] >= BUILD_SLEEP_S
    assert abs(build["build_seconds"] - span) <= 0.1 * span
    assert abs(build["build_seconds"] - float(ended[2])) <= 0.1 * float(ended[2])
    assert builds["totals"]["builds"] >= 1 and builds["totals"]["build_seconds"] >= build["build_seconds"] - 0.01


def test_images_count_as_storage_and_metrics_carry_the_tenant(platform: MeteredPlatform, deployed: dict[str, Any]) -> None:
    deadline = time.monotonic() + 20
    while (storage := platform.tenant.get("/v1/usage?kind=storage").json())["totals"]["images"]["peak_bytes"] == 0:
        assert time.monotonic() < deadline, storage
        time.sleep(1)
    assert storage["totals"]["images"]["peak_bytes"] > 10 * MiB  # the Python base image's layers count in it
    text = platform.operator.get("/metrics").text
    tenant_id = platform.tenant.tenant_id
    [cpu] = re.findall(rf'moorage_tenant_cpu_seconds_total{{tenant="{tenant_id}"}} (\S+)', text)
    assert float(cpu) >= 4.0
    assert f'moorage_tenant_storage_bytes{{kind="images",tenant="{tenant_id}"}}' in text


def _wait_serving(platform: Platform, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if platform.get(APP).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the restarted app never served again")


def _seconds(clock: str) -> int:
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def test_a_database_container_is_metered_for_its_tenant(platform: Platform, deployed: dict[str, Any]) -> None:
    r = platform.tenant.post("/v1/databases", json={"name": "cache", "engine": "redis", "memory_mb": 128})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 180
    while (db := platform.tenant.get("/v1/databases/cache").json())["status"] == "provisioning":
        assert time.monotonic() < deadline, db
        time.sleep(1)
    assert db["status"] == "available", db
    sampler = platform.app.state.services.sampler
    [redis] = [u for u in sampler.runtime.container_usage() if u.role == "database" and u.tenant == TENANT]
    assert redis.memory_bytes > 0 and redis.cpu_seconds > 0
    assert db["id"] in sampler.runtime.database_volume_bytes()  # its volume is measured as storage (empty redis: ~0)
