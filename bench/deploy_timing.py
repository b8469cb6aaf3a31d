"""Deploy timing: POST of a source archive -> first 200 through a real Traefik, for a
*cached* build (the same source was built once before), split into the deployment's own
step timings: build / start (container create+start under runsc) / health (until the app's
health check passes) / route (route file written -> Traefik serves the release). "other" is
the rest (202 answer, job pickup, env resolution, DB writes; a little below 0 when the
bench's probe sees its 200 before the server's own route check has recorded it).

Runs the real control plane in-process (workers + reconciler) with its own Traefik on
loopback ports; each run deploys a fresh app so the first 200 is unambiguous.

    .venv/bin/python bench/deploy_timing.py [-n 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from litestar.testing import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _probes import first_200  # bench/ is on sys.path when a bench runs as a script

from control.app import create_app
from control.logging import configure_logging
from control.settings import Settings
from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import cleanup_tenant

STEPS = ("build_s", "start_s", "health_s", "route_s")
TARGET_S = 1.5  # median POST -> first 200 of a cached deploy, at most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3, help="measured runs (after one warm-up build)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas of the rollout compared with one")
    args = parser.parse_args()
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    archive = tar_gz(source("bench"))
    rows: list[dict[str, float]] = []
    with TraefikProcess() as traefik:
        settings = Settings(
            data_dir=Path(tempfile.mkdtemp(prefix="moorage-bench-")),
            base_domain="apps.test",
            traefik_dynamic_dir=traefik.dynamic_dir,
            traefik_url=traefik.url,
            log_level="warning",
            rate_limit_key_quota=100_000,  # the bench polls; people's limits would only throttle it
            rate_limit_tenant_quota=100_000,
        )
        app = create_app(settings)
        configure_logging("warning", "json")
        try:
            with TestClient(app, timeout=300) as client:
                op = {"Authorization": f"Bearer {app.state.services.keys.bootstrap_operator('bench').token}"}
                tid = client.post("/v1/tenants", json={"name": tenant}, headers=op).json()["id"]
                token = client.post(f"/v1/tenants/{tid}/keys", json={"scopes": ["admin"]}, headers=op).json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                for run in range(args.n + 1):  # run 0 warms the build cache
                    name = f"app{run}"
                    client.post("/v1/apps", json={"name": name}, headers=auth)
                    started = time.perf_counter()
                    r = client.post(
                        f"/v1/apps/{name}/deployments", content=archive, headers={**auth, "Content-Type": "application/gzip"}
                    )
                    assert r.status_code == 202, r.text
                    with httpx.Client(timeout=2.0) as probe:
                        served = first_200(probe, traefik.url + "/", f"{name}.{tenant}.apps.test", timeout=120.0, interval=0.01)
                    while (body := client.get(f"/v1/apps/{name}/deployments/{r.json()['id']}", headers=auth).json())[
                        "status"
                    ] != "running":
                        assert body["status"] in ("queued", "building", "releasing"), body
                        time.sleep(0.05)
                    row = {"total_s": served - started, **{k: body["timings"][k] for k in STEPS}}
                    # The rest: upload, queueing, polling; below 0 when this probe's first 200 comes
                    # before the server's own route check (it polls too) has recorded route_s.
                    row["other_s"] = row["total_s"] - sum(row[k] for k in STEPS)
                    label = "warm-up (uncached)" if run == 0 else f"run {run}"
                    print(f"{label:>20}: " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
                    if run:
                        rows.append(row)
                rollouts = {n: replica_rollout(client, auth, archive, n) for n in (1, args.replicas)}
        finally:
            cleanup_tenant(tenant)
    for n, seconds in rollouts.items():
        print(f"{'redeploy, ' + str(n) + ' replica(s)':>20}: POST -> every replica new, old ones stopped {seconds:.2f}s")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{'median':>20}: " + "  ".join(f"{k}={v:.3f}" for k, v in med.items()))
    print(
        f"SUMMARY: cached deploy POST -> first 200 via Traefik median {med['total_s']:.2f}s over {len(rows)} runs "
        f"(build {med['build_s']:.2f}s, start {med['start_s']:.2f}s, health {med['health_s']:.2f}s, "
        f"route {med['route_s']:.2f}s, other {med['other_s']:.2f}s); "
        f"target <= {TARGET_S} s: {'met' if med['total_s'] <= TARGET_S else 'NOT met'}; "
        f"redeploy to all-new: 1 replica {rollouts[1]:.2f}s, {args.replicas} replicas {rollouts[args.replicas]:.2f}s"
    )
    return 0


def replica_rollout(client: TestClient, auth: dict[str, str], archive: bytes, replicas: int) -> float:
    """A redeploy of an app running ``replicas`` containers: seconds from the POST until the
    deployment is ``running``, i.e. every replica of the new release healthy and routed and
    the old ones stopped (cached build: the same source as the first deploy of the bench)."""
    name = f"rollout{replicas}"
    assert client.post("/v1/apps", json={"name": name, "replicas": replicas}, headers=auth).status_code == 201

    def deploy() -> float:
        started = time.perf_counter()
        r = client.post(f"/v1/apps/{name}/deployments", content=archive, headers={**auth, "Content-Type": "application/gzip"})
        assert r.status_code == 202, r.text
        while (body := client.get(f"/v1/apps/{name}/deployments/{r.json()['id']}", headers=auth).json())["status"] != "running":
            assert body["status"] in ("queued", "building", "releasing"), body
            time.sleep(0.02)
        return time.perf_counter() - started

    deploy()  # the replicas to replace
    return deploy()


if __name__ == "__main__":
    raise SystemExit(main())
