"""Replicas against the real engine, runsc and Traefik: an app of 3 replicas answers from all
3 (it says which container it is), a redeploy under constant polling fails no request, and a
killed replica is back within the reconciler's interval."""

from __future__ import annotations

import threading
import time

import docker
import httpx
import pytest

from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import Platform

pytestmark = pytest.mark.docker
APP = "many"
REPLICAS = 3
RECONCILE_INTERVAL_S = 2  # e2e_settings
# Each container says who it is: Docker names its hostname after the container.
WHO = 'import socket\nVERSION = VERSION + "@" + socket.gethostname()'


def _containers(platform: Platform) -> list:
    labels = [f"moorage.tenant={platform.tenant_name}", f"moorage.app={APP}"]
    return docker.from_env().containers.list(filters={"label": labels})


def _answering(platform: Platform, n: int = 60) -> set[str]:
    """The containers that answered ``n`` requests through Traefik (a 502 from a replica
    just killed names none)."""
    with httpx.Client(timeout=5) as client:
        answers = [client.get(platform.traefik.url + "/", headers={"Host": platform.host(APP)}) for _ in range(n)]
    return {r.text.split()[0].split("@")[1] for r in answers if r.status_code == 200}


@pytest.fixture(scope="module")
def replicated(platform: Platform) -> Platform:
    created = platform.tenant.post("/v1/apps", json={"name": APP, "port": 8080, "replicas": REPLICAS})
    assert created.status_code == 201 and created.json()["replicas"] == REPLICAS, created.text
    body = platform.wait(APP, platform.deploy(APP, tar_gz(source("1.0", startup=WHO))))
    assert body["status"] == "running", body["reason"]
    return platform


def test_requests_through_traefik_reach_every_replica(replicated: Platform) -> None:
    containers = _containers(replicated)
    assert len(containers) == REPLICAS
    assert all(c.attrs["HostConfig"]["Runtime"] == "runsc" for c in containers)
    assert _answering(replicated) == {c.attrs["Config"]["Hostname"] for c in containers}


def test_a_redeploy_under_constant_polling_fails_no_request(replicated: Platform) -> None:
    failures: list[str] = []
    answers: list[str] = []
    stop = threading.Event()

    def poll() -> None:  # 20 requests a second
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    r = client.get(replicated.traefik.url + "/", headers={"Host": replicated.host(APP)})
                    (answers if r.status_code == 200 else failures).append(f"{r.status_code} {r.text[:60]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.5)
        body = replicated.wait(APP, replicated.deploy(APP, tar_gz(source("2.0", startup=WHO))))
        time.sleep(1.0)  # and after the old replicas stopped
    finally:
        stop.set()
        poller.join()
    print(f"\nreplicas redeploy: {len(answers)} answers, {len(failures)} failures {failures[:3]}")
    assert body["status"] == "running", body
    assert failures == [] and len(answers) > 20
    assert {a.split()[1].split("@")[0] for a in answers} == {"version=1.0", "version=2.0"}
    containers = _containers(replicated)
    assert len(containers) == REPLICAS and {c.labels["moorage.release"] for c in containers} == {"v2"}


def test_a_killed_replica_is_back_within_the_reconcilers_interval(replicated: Platform) -> None:
    victim = _containers(replicated)[0]
    victim.remove(force=True)
    killed = time.monotonic()
    while len(_containers(replicated)) < REPLICAS:
        assert time.monotonic() - killed < RECONCILE_INTERVAL_S * 3 + 10, "the replica never came back"
        time.sleep(0.2)
    back_s = time.monotonic() - killed
    deadline = time.monotonic() + 10
    while _answering(replicated, 30) != {c.attrs["Config"]["Hostname"] for c in _containers(replicated)}:
        assert time.monotonic() < deadline, "the new replica never joined the route"
        time.sleep(0.3)
    print(f"\na removed replica was back in {back_s:.1f}s (reconcile interval {RECONCILE_INTERVAL_S}s)")
    assert back_s < RECONCILE_INTERVAL_S + 3


def test_scaling_down_and_up_applies_without_a_deploy(replicated: Platform) -> None:
    assert replicated.tenant.patch(f"/v1/apps/{APP}", json={"replicas": 1}).json()["replicas"] == 1
    deadline = time.monotonic() + 10
    while len(_containers(replicated)) != 1:
        assert time.monotonic() < deadline, "never scaled down"
        time.sleep(0.2)
    assert len(_answering(replicated, 20)) == 1
    bad = replicated.tenant.patch(f"/v1/apps/{APP}", json={"replicas": 0})
    assert bad.status_code == 400 or bad.status_code == 422, bad.text
