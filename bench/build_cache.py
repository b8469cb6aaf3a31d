"""Build cache: the build time (the deployment's own ``build_s``) of one app, side by side:

- cold: tenant A's first build;
- warm: tenant A's redeploy with its code changed and its dependencies not (the dependency
  step comes from the tenant's cache, only the code is copied again);
- other tenant: tenant B building A's first source exactly, which is cold all the same (each
  tenant's build steps carry its own lineage, so no layer of A's is ever a cache hit for B).

The app installs its "dependencies" in a RUN step that does real work (a library tree copied
and byte-compiled, a 50 MB layer): what a ``pip install`` costs, without a network.
Runs the real control plane in-process with its own Traefik on loopback ports; each round
uses a fresh pair of tenants, so its cold builds are cold.

    .venv/bin/python bench/build_cache.py [-n 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from litestar.testing import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control.app import create_app
from control.logging import configure_logging
from control.settings import Settings
from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import cleanup_tenant

DEPENDENCIES = (  # a library tree copied in and byte-compiled at three optimisation levels: ~5 s of real work
    "COPY requirements.txt /app/requirements.txt\n"
    "RUN cp -r /usr/lib/python3.11 /opt/deps && python3 -m compileall -f -q -j 1 -o 0 -o 1 -o 2 /opt/deps > /dev/null\n"
)


def app_source(version: str) -> dict[str, str]:
    return {**source(version, extra_steps=DEPENDENCIES), "requirements.txt": "# the app's dependencies, unchanged\n"}


def build_seconds(client: TestClient, auth: dict[str, str], app: str, files: dict[str, str]) -> tuple[float, bool]:
    """The deployment's build time, and whether its log says a step came from the cache."""
    r = client.post(f"/v1/apps/{app}/deployments", content=tar_gz(files), headers={**auth, "Content-Type": "application/gzip"})
    assert r.status_code == 202, r.text
    path = f"/v1/apps/{app}/deployments/{r.json()['id']}"
    while (body := client.get(path, headers=auth).json())["status"] not in ("running", "failed", "cancelled"):
        time.sleep(0.05)
    log = client.get(f"{path}/logs", headers=auth).text
    assert body["status"] == "running", (body, log[-2000:])
    return float(body["timings"]["build_s"]), "Using cache" in log


def tenant_key(client: TestClient, op: dict[str, str], name: str) -> dict[str, str]:
    tid = client.post("/v1/tenants", json={"name": name}, headers=op).json()["id"]
    token = client.post(f"/v1/tenants/{tid}/keys", json={"scopes": ["admin"]}, headers=op).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/apps", json={"name": "web"}, headers=auth).status_code == 201
    return auth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2, help="rounds, each with a fresh pair of tenants")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    rows: list[dict[str, float]] = []
    names: list[str] = []
    with TraefikProcess() as traefik:
        settings = Settings(
            data_dir=Path(tempfile.mkdtemp(prefix="moorage-bench-")),
            base_domain="apps.test",
            traefik_dynamic_dir=traefik.dynamic_dir,
            traefik_url=traefik.url,
            log_level="warning",
            swap_drain_ms=0,
            rate_limit_key_quota=100_000,  # the bench polls; people's limits would only throttle it
            rate_limit_tenant_quota=100_000,
        )
        app = create_app(settings)
        configure_logging("warning", "json")
        try:
            with TestClient(app, timeout=300) as client:
                op = {"Authorization": f"Bearer {app.state.services.keys.bootstrap_operator('bench').token}"}
                for round_ in range(1, args.n + 1):
                    a_name, b_name = f"cache-a-{run}-{round_}", f"cache-b-{run}-{round_}"
                    names += [a_name, b_name]
                    a, b = tenant_key(client, op, a_name), tenant_key(client, op, b_name)
                    first = app_source(f"{run}-{round_}-v1")
                    cold, cold_hit = build_seconds(client, a, "web", first)
                    warm, warm_hit = build_seconds(client, a, "web", app_source(f"{run}-{round_}-v2"))
                    other, other_hit = build_seconds(client, b, "web", first)
                    assert warm_hit and not cold_hit and not other_hit, (cold_hit, warm_hit, other_hit)
                    row = {"cold_s": cold, "warm_s": warm, "other_tenant_s": other}
                    print(
                        f"round {round_}: cold {cold:.2f}s  warm {warm:.2f}s ({cold / warm:.1f}x)  "
                        f"other tenant, identical source {other:.2f}s",
                        flush=True,
                    )
                    rows.append(row)
        finally:
            for name in names:
                cleanup_tenant(name)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{'':>14}{'cold':>10}{'warm':>10}{'ratio':>8}{'other tenant':>15}")
    print(
        f"{'median':>14}{med['cold_s']:>9.2f}s{med['warm_s']:>9.2f}s{med['cold_s'] / med['warm_s']:>7.1f}x"
        f"{med['other_tenant_s']:>14.2f}s"
    )
    print(
        f"SUMMARY: build cache, median of {len(rows)}: cold {med['cold_s']:.2f}s, warm (code changed, dependencies "
        f"not) {med['warm_s']:.2f}s = {med['cold_s'] / med['warm_s']:.1f}x faster; another tenant's identical "
        f"source {med['other_tenant_s']:.2f}s (cold: tenants share no build cache)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
