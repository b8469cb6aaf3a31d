"""dockerd restarts while a deployment is building.

Expected: apps already running keep serving through Traefik the whole time (live-restore);
a Docker-backed API call made while dockerd is down answers 503 ``dependency-unavailable``
with Retry-After (not a 500); the interrupted deployment is started over by itself once
dockerd is back and ends ``running``; exactly one deployment, one release and one container
per app, and no build container left behind."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import docker
import httpx
import pytest

from control.jobs import runtime_docker
from runtime.traefik import TraefikProcess
from tests.conftest import Caller
from tests.e2e.apps import source, tar_gz
from tests.fault import dockerd
from tests.fault.conftest import PlatformFactory
from tests.runtime.helpers import RUN_ID


@pytest.fixture
def short_docker_breaker(monkeypatch: pytest.MonkeyPatch) -> float:
    """The control plane's Docker breaker opens during the outage, and the interrupted job then
    waits for its trial call. Its reset (30 s, no setting yet) would be most of this test's
    time; 5 s takes the same path: open, wait, trial call, closed."""
    reset_s = 5.0
    real = runtime_docker.runtime_settings
    monkeypatch.setattr(
        runtime_docker, "runtime_settings", lambda settings: replace(real(settings), breaker_reset_timeout=reset_s)
    )
    return reset_s


@pytest.fixture
def dockerd_argv() -> Iterator[list[str]]:
    """Where the test keeps dockerd's argv while it is stopped; started again if the test failed."""
    argv: list[str] = []
    yield argv
    if not dockerd.answers():
        dockerd.start(argv)


class Poller(threading.Thread):
    """GETs an app through Traefik every 50 ms and counts the answers."""

    def __init__(self, url: str, host: str) -> None:
        super().__init__(daemon=True)
        self.url, self.host = url, host
        self.seen: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.halt.wait(0.05):
                try:
                    r = client.get(self.url, headers={"Host": self.host})
                    self.seen[f"{r.status_code} {r.text.split()[0] if r.status_code == 200 else ''}".strip()] += 1
                except httpx.HTTPError as exc:
                    self.seen[type(exc).__name__] += 1


def _containers_by_app(tenant: str) -> Counter[str]:
    client = docker.from_env()
    try:
        return Counter(
            c.labels.get("moorage.app", "?")
            for c in client.containers.list(all=True, filters={"label": f"moorage.tenant={tenant}"})
        )
    finally:
        client.close()


def _build_step_containers(marker: str) -> list[str]:
    """Containers left from a build step whose command contains ``marker`` (unlabelled)."""
    client = docker.from_env()
    try:
        return [c.short_id for c in client.containers.list(all=True) if marker in " ".join(c.attrs["Config"].get("Cmd") or [])]
    finally:
        client.close()


def test_dockerd_restart_mid_build(
    make_platform: PlatformFactory, traefik: TraefikProcess, dockerd_argv: list[str], short_docker_breaker: float
) -> None:
    assert dockerd.live_restore(), "dockerd runs without live-restore: run deploy/host-setup.sh (it sets it)"
    with make_platform("dockerd", traefik, health_timeout_s=30, job_lease_s=10) as p:
        for name in ("steady", "victim"):
            assert p.tenant.post("/v1/apps", json={"name": name}).status_code == 201
        steady = p.wait("steady", p.deploy("steady", tar_gz(source(f"steady-{RUN_ID}"))))
        assert steady["status"] == "running", steady

        slow = tar_gz(source(f"victim-{RUN_ID}", extra_steps=f"RUN echo slow-step-started && sleep 8 # {RUN_ID}\n"))
        victim = p.deploy("victim", slow)
        deadline = time.monotonic() + 120
        while "slow-step-started" not in p.tenant.get(f"/v1/apps/victim/deployments/{victim}/logs").text:
            assert time.monotonic() < deadline, "the slow build step never started"
            time.sleep(0.2)

        operator = Caller(p.client, p.app.state.services.keys.bootstrap_operator("fault-health", another=True).token)
        poller = Poller(traefik.url + "/", p.host("steady"))
        poller.start()
        stopped_at = time.monotonic()
        dockerd_argv[:] = dockerd.stop()
        try:
            during = p.tenant.get("/v1/apps/steady/logs")  # needs the Docker engine
            assert during.status_code == 503, during.text
            assert during.headers["content-type"].startswith("application/problem+json")
            assert during.json()["code"] == "dependency-unavailable" and int(during.headers["retry-after"]) >= 1
            # The operator's health names the engine, really stopped, with what it found.
            health = operator.get("/v1/operator/health")
            assert health.status_code == 200 and health.json()["status"] == "fail", health.text
            docker_check = health.json()["components"]["docker"]
            assert "docker" in health.json()["failing"] and docker_check["status"] == "fail", docker_check
            assert docker_check["figure"] and docker_check["remedy"], docker_check
            time.sleep(2)  # a while without Docker: the poller keeps asking the running app
        finally:
            dockerd.start(dockerd_argv)
        outage_s = time.monotonic() - stopped_at

        body = p.wait("victim", victim, timeout=240)
        recovered_s = time.monotonic() - stopped_at
        time.sleep(1)
        poller.halt.set()
        poller.join(5)
        log = p.tenant.get(f"/v1/apps/victim/deployments/{victim}/logs").text
        print(
            f"\ndockerd down {outage_s:.1f}s; victim {body['status']} {recovered_s:.1f}s after the stop; "
            f"steady through Traefik meanwhile: {dict(poller.seen)}; transitions "
            f"{[(t['status'], t.get('reason')) for t in body['transitions']]}"
        )

        assert body["status"] == "running", (body, log[-3000:])
        assert [t["status"] for t in body["transitions"]].count("building") >= 2  # started over after the outage
        assert "lost the connection to the Docker engine" in log
        assert set(poller.seen) == {f"200 version={f'steady-{RUN_ID}'}"}, poller.seen  # never a failed request
        r = httpx.get(traefik.url + "/", headers={"Host": p.host("victim")}, timeout=5)
        assert r.status_code == 200 and f"victim-{RUN_ID}" in r.text

        for app in ("steady", "victim"):  # nothing lost, nothing duplicated
            assert len(p.tenant.get(f"/v1/apps/{app}/deployments").json()["items"]) == 1
            assert len(p.tenant.get(f"/v1/apps/{app}/releases").json()["items"]) == 1
        time.sleep(3)  # one reconcile pass: strays, if any, are visible by now
        assert _containers_by_app(p.tenant_name) == Counter({"steady": 1, "victim": 1})
        assert "step container(s) the interrupted attempt left" in log
        assert _build_step_containers(f"slow-step-started && sleep 8 # {RUN_ID}") == []
