"""Traefik goes down (SIGKILL) and comes back without its route files, as after a crash on
a host whose dynamic config lived on tmpfs or was reinstalled.

Expected: while it is down, ``/readyz`` says ``degraded`` with the router unreachable, and
a deploy still completes (its log warns that Traefik did not confirm the route); when Traefik
is back, the reconciler has rewritten every app's route and each app answers with its
current release within a reconcile period; one container and one current release per app."""

from __future__ import annotations

import time

import docker
import httpx

from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.fault.conftest import PlatformFactory
from tests.runtime.helpers import RUN_ID, TRAEFIK_THROTTLE

RECONCILE_S = 2


def _answer(url: str, host: str) -> str:
    try:
        r = httpx.get(url, headers={"Host": host}, timeout=2)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return r.text.split()[0] if r.status_code == 200 else str(r.status_code)


def test_traefik_down_then_back_without_its_route_files(make_platform: PlatformFactory) -> None:
    # Two deploys of the tenant at once: the apps do not depend on each other.
    with (
        TraefikProcess(throttle=TRAEFIK_THROTTLE) as traefik,
        make_platform("traefik", traefik, reconcile_interval_s=RECONCILE_S, route_verify_timeout_s=2, deploys_per_tenant=2) as p,
    ):
        versions = {"alpha": f"alpha1-{RUN_ID}", "beta": f"beta1-{RUN_ID}"}
        for app in versions:
            assert p.tenant.post("/v1/apps", json={"name": app}).status_code == 201
        deployments = {app: p.deploy(app, tar_gz(source(version))) for app, version in versions.items()}
        for app, version in versions.items():
            assert p.wait(app, deployments[app])["status"] == "running"
            assert _answer(traefik.url, p.host(app)) == f"version={version}"
        assert p.client.get("/readyz").json()["checks"]["router"] == "ok"

        traefik.crash()
        assert _answer(traefik.url, p.host("alpha")) == "ConnectError"
        ready = p.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["router"].startswith("unreachable")

        # Deploys go on while the router is down: a new app and a new release of alpha.
        versions |= {"gamma": f"gamma1-{RUN_ID}", "alpha": f"alpha2-{RUN_ID}"}
        assert p.tenant.post("/v1/apps", json={"name": "gamma"}).status_code == 201
        deployments = {app: p.deploy(app, tar_gz(source(versions[app]))) for app in ("gamma", "alpha")}
        for app, dep in deployments.items():
            assert p.wait(app, dep)["status"] == "running"
            assert "Traefik did not answer" in p.tenant.get(f"/v1/apps/{app}/deployments/{dep}/logs").text

        routes = sorted(traefik.dynamic_dir.glob("*"))
        assert len(routes) == 3
        for route in routes:  # the host comes back without its dynamic config
            route.unlink()
        restarted = time.monotonic()
        traefik.start()
        answers: dict[str, str] = {}
        while time.monotonic() - restarted < 5 * RECONCILE_S + 10:
            answers = {app: _answer(traefik.url, p.host(app)) for app in versions}
            if all(answers[app] == f"version={v}" for app, v in versions.items()):
                break
            time.sleep(0.1)
        restored_s = time.monotonic() - restarted
        print(f"\nTraefik back without route files: every app served its current release after {restored_s:.2f}s: {answers}")
        assert answers == {app: f"version={v}" for app, v in versions.items()}
        assert len(list(traefik.dynamic_dir.glob("*"))) == 3  # written again by the reconciler
        assert p.client.get("/readyz").json()["checks"]["router"] == "ok"

        client = docker.from_env()  # nothing duplicated: one container and one current release per app
        by_app = sorted(
            c.labels["moorage.app"]
            for c in client.containers.list(all=True, filters={"label": f"moorage.tenant={p.tenant_name}"})
        )
        client.close()
        assert by_app == ["alpha", "beta", "gamma"]
        assert len(p.tenant.get("/v1/apps/alpha/releases").json()["items"]) == 2
        assert len(p.tenant.get("/v1/apps/alpha/deployments").json()["items"]) == 2
