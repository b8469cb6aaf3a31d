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


class Poller:
    """20 requests a second through Traefik while a test changes the replicas underneath."""

    def __init__(self, platform: Platform) -> None:
        self.platform, self.answers, self.failures, self.slowest_s = platform, [], [], 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.get(self.platform.traefik.url + "/", headers={"Host": self.platform.host(APP)})
                    (self.answers if r.status_code == 200 else self.failures).append(f"{r.status_code} {r.text[:60]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.slowest_s = max(self.slowest_s, time.monotonic() - sent)
                time.sleep(0.05)


def test_a_redeploy_under_constant_polling_fails_no_request(replicated: Platform) -> None:
    with Poller(replicated) as polled:
        time.sleep(0.5)
        body = replicated.wait(APP, replicated.deploy(APP, tar_gz(source("2.0", startup=WHO))))
        time.sleep(1.0)  # and after the old replicas stopped
    answers, failures = polled.answers, polled.failures
    print(f"\nreplicas redeploy: {len(answers)} answers, {len(failures)} failures {failures[:3]}")
    assert body["status"] == "running", body
    assert failures == [] and len(answers) > 20
    assert {a.split()[1].split("@")[0] for a in answers} == {"version=1.0", "version=2.0"}
    containers = _containers(replicated)
    assert len(containers) == REPLICAS and {c.labels["moorage.release"] for c in containers} == {"v2"}


def test_a_killed_replica_is_back_within_the_reconcilers_interval(replicated: Platform) -> None:
    """Until the reconciler rewrites the route, Traefik still names the dead replica's address:
    its short dial timeout and retry send those requests on to a live replica instead of
    holding them for the kernel's neighbour timeouts (8 s and more)."""
    with Poller(replicated) as polled:
        time.sleep(0.5)
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
    print(
        f"\na removed replica was back in {back_s:.1f}s (reconcile interval {RECONCILE_INTERVAL_S}s); meanwhile "
        f"{len(polled.answers)} answers, {len(polled.failures)} failures {polled.failures[:3]}, slowest {polled.slowest_s:.2f}s"
    )
    assert back_s < RECONCILE_INTERVAL_S + 3
    assert polled.slowest_s < 3, "a request waited on the dead replica's address"
    assert len(polled.failures) <= 2, polled.failures  # at most what the removal cut off mid-answer


def test_scaling_down_and_up_applies_without_a_deploy(replicated: Platform) -> None:
    assert replicated.tenant.patch(f"/v1/apps/{APP}", json={"replicas": 1}).json()["replicas"] == 1
    deadline = time.monotonic() + 10
    while len(_containers(replicated)) != 1:
        assert time.monotonic() < deadline, "never scaled down"
        time.sleep(0.2)
    assert len(_answering(replicated, 20)) == 1
    bad = replicated.tenant.patch(f"/v1/apps/{APP}", json={"replicas": 0})
    assert bad.status_code == 400 or bad.status_code == 422, bad.text
