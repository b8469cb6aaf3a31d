"""Deployments against the real engine, runsc and Traefik:

1. upload → build → release → health-gated run → route; env var injected; a redeploy
   with zero failed requests through Traefik; rollback restores the old content;
2. a release failing its health check leaves the previous one serving, and the
   deployment ends ``failed`` with the container's last log lines;
4. an app container stopped behind moorage's back is brought back by the reconciler.
"""

from __future__ import annotations

import json
import threading
import time

import docker
import httpx
import pytest

from tests.e2e.apps import crashing, source, tar_gz
from tests.e2e.conftest import Platform

pytestmark = pytest.mark.docker
APP = "web"


class Poller(threading.Thread):
    """Hammers the app through Traefik; every answer that is not a 200 counts as a failure."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(daemon=True)
        self.platform, self.stop = platform, threading.Event()
        self.requests, self.failures, self.bodies = 0, [], set()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.platform.traefik.url + "/", headers={"Host": self.platform.host(APP)})
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:80]!r}")
                    else:
                        self.bodies.add(r.text.strip())
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.requests += 1


@pytest.fixture(scope="module")
def first_release(platform: Platform) -> dict:
    t = platform.tenant
    assert t.post("/v1/apps", json={"name": APP, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    env = t.request("PUT", f"/v1/apps/{APP}/env/GREETING", json={"value": "hello-from-env", "secret": True})
    assert env.status_code == 200, env.text
    dep = platform.deploy(APP, tar_gz(source("1.0")))
    # Follow the build log live: SSE until the final status event.
    events = []
    with platform.client.stream(
        "GET", f"/v1/apps/{APP}/deployments/{dep}/logs?follow=true", headers={"Authorization": f"Bearer {t.token}"}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, line.removeprefix("data: ")))
                if event == "status":
                    break
    body = platform.wait(APP, dep)
    assert body["status"] == "running", body
    assert events[-1][0] == "status" and json.loads(events[-1][1])["status"] == "running"
    assert any("Step 1/" in data or "FROM" in data for kind, data in events if kind == "log"), events[:10]
    return body


def test_deploy_serves_through_traefik_with_env_injected(platform: Platform, first_release: dict) -> None:
    r = platform.get(APP)
    assert r.status_code == 200 and r.text.strip() == "version=1.0 greeting=hello-from-env"
    assert r.headers["x-moorage-release"] == "v1"
    assert [t["status"] for t in first_release["transitions"]] == ["queued", "building", "releasing", "running"]
    assert first_release["release"] == "v1" and first_release["builder"] == "dockerfile"
    assert set(first_release["timings"]) == {"build_s", "start_s", "health_s", "route_s"}
    releases = platform.tenant.get(f"/v1/apps/{APP}/releases").json()["items"]
    assert [(r["name"], r["current"], r["env_version"]) for r in releases] == [("v1", True, 1)]
    # The container: sandboxed, on the tenant network, labelled; the env value only in its config.
    client = docker.from_env()
    [c] = client.containers.list(filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.app=web"]})
    assert c.attrs["HostConfig"]["Runtime"] == "runsc" and c.labels["moorage.release"] == "v1"
    assert f"moorage-t-{platform.tenant_name}" in c.attrs["NetworkSettings"]["Networks"]
    log = platform.tenant.get(f"/v1/apps/{APP}/deployments/{first_release['id']}/logs").text
    assert "hello-from-env" not in log  # secrets never reach the build log
    runtime_log = platform.tenant.get(f"/v1/apps/{APP}/logs?tail=5")
    assert runtime_log.status_code == 200 and "serving version 1.0 on port 8080" in runtime_log.text


def test_redeploy_has_zero_failed_requests_and_rollback_restores(platform: Platform, first_release: dict) -> None:
    poller = Poller(platform)
    poller.start()
    time.sleep(0.5)
    dep = platform.deploy(APP, tar_gz(source("2.0")))
    body = platform.wait(APP, dep)
    time.sleep(1.0)  # keep polling after the old container stopped
    poller.stop.set()
    poller.join()
    print(f"\nswap poller: {poller.requests} requests, {len(poller.failures)} non-200: {poller.failures[:5]}")
    assert body["status"] == "running" and body["release"] == "v2", body
    assert poller.failures == [] and poller.requests > 50
    assert poller.bodies == {"version=1.0 greeting=hello-from-env", "version=2.0 greeting=hello-from-env"}
    assert platform.get(APP).text.strip() == "version=2.0 greeting=hello-from-env"
    client = docker.from_env()
    running = client.containers.list(filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.app=web"]})
    assert [c.labels["moorage.release"] for c in running] == ["v2"]  # the old one is gone

    # Changed after v1 (and v2): the rollback brings back v1's value, not today's.
    changed = platform.tenant.request("PUT", f"/v1/apps/{APP}/env/GREETING", json={"value": "changed-later", "secret": True})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    rollback = platform.tenant.post(f"/v1/apps/{APP}/rollback", json={"release": "v1"})
    assert rollback.status_code == 202, rollback.text
    restores = {"kind": "rollback", "release": "v1", "config": "v1's: GREETING v1"}
    assert rollback.json()["source"] == restores, "the answer names the config it restores"
    body = platform.wait(APP, rollback.json()["id"])
    assert body["status"] == "running" and body["release"] == "v3" and body["source"] == restores
    assert "building" not in [t["status"] for t in body["transitions"]]  # no build
    assert platform.get(APP).text.strip() == "version=1.0 greeting=hello-from-env"
    env = platform.tenant.get(f"/v1/apps/{APP}/env", params={"reveal": "true"}).json()["vars"]
    assert [(v["name"], v["value"]) for v in env] == [("GREETING", "hello-from-env")], "the app's config is v1's again"
    releases = platform.tenant.get(f"/v1/apps/{APP}/releases").json()["items"]
    assert [(r["name"], r["current"]) for r in releases] == [("v1", False), ("v2", False), ("v3", True)]
    assert releases[2]["image_id"] == releases[0]["image_id"] and releases[2]["rollback_of"] == releases[0]["id"]
    assert releases[0]["config"] == {"env_version": 1, "vars": [{"name": "GREETING", "version": 1, "secret": True}], "links": []}
    assert releases[2]["config"] == releases[0]["config"]


def test_failing_health_check_keeps_the_previous_release(platform: Platform, first_release: dict) -> None:
    before = platform.get(APP).text
    poller = Poller(platform)
    poller.start()
    dep = platform.deploy(APP, tar_gz(crashing("9.9")))
    body = platform.wait(APP, dep)
    poller.stop.set()
    poller.join()
    assert body["status"] == "failed", body
    assert "health check GET /healthz" in body["reason"] and "previous release keeps serving" in body["reason"]
    assert "fatal: DATABASE_URL is not set, cannot start" in body["reason"]  # the container's last lines
    assert "DATABASE_URL is not set" in platform.tenant.get(f"/v1/apps/{APP}/deployments/{dep}/logs").text
    assert poller.failures == [] and poller.requests > 10
    assert platform.get(APP).text == before
    client = docker.from_env()
    running = client.containers.list(all=True, filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.app=web"]})
    assert len(running) == 1  # the failed container was removed


def test_reconciler_restarts_a_container_stopped_behind_its_back(platform: Platform, first_release: dict) -> None:
    client = docker.from_env()
    [c] = client.containers.list(filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.app=web"]})
    expected = platform.get(APP).text
    c.stop(timeout=1)
    stopped = time.monotonic()
    deadline = stopped + 20  # reconcile period is 2 s in these tests
    while time.monotonic() < deadline:
        try:
            r = platform.get(APP, timeout=1.0)
            if r.status_code == 200 and r.text == expected:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    recovered = time.monotonic() - stopped
    print(f"\nreconciler recovery: {recovered:.2f}s (period 2 s)")
    assert recovered < 20 and platform.get(APP).text == expected
    c.reload()
    assert c.status == "running"
