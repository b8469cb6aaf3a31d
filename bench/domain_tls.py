"""Custom domain to HTTPS: ``POST /v1/apps/{app}/domains`` → ``active`` (the HTTP token
proved through Traefik) → the first HTTPS 200 with a certificate from Pebble (HTTP-01
validated for real, the certificate verified against Pebble's root, hostname checked).

Runs its own Pebble and pebble-challtestsrv (Debian's ``pebble``), a Traefik with an ACME
resolver pointed at Pebble, and the control plane on a real socket; one app is deployed
through the real pipeline, then each sample adds a new hostname to it.

    .venv/bin/python bench/domain_tls.py [-n 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from runtime.traefik import TraefikProcess  # noqa: E402
from tests.acme_servers import AcmeTestServers, binaries_present  # noqa: E402
from tests.e2e.apps import source, tar_gz  # noqa: E402
from tests.e2e.conftest import cleanup_tenant, e2e_settings  # noqa: E402
from tests.e2e.test_domains_e2e import World  # noqa: E402
from tests.live_server import free_port, serving  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    if not binaries_present():
        print("needs pebble and pebble-challtestsrv: MOORAGE_TEST_TOOLS=1 bash deploy/host-setup.sh")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="moorage-bench-domains-"))
    acme = AcmeTestServers(folder / "acme")
    traefik = TraefikProcess(
        acme_email="ops@example.test", acme_ca_server=acme.directory_url, acme_storage=folder / "acme.json",
        acme_ca_bundle=acme.ca_bundle,
    )  # fmt: skip
    acme.start(http_port=traefik.http_port)
    traefik.start()
    tenant_name = f"bench-dom-{int(time.time())}"
    settings = e2e_settings(
        folder / "data", traefik, port=free_port(), acme_email="ops@example.test", acme_storage=str(folder / "acme.json"),
        domain_nameservers=acme.nameserver, domain_http_port=traefik.http_port, domain_verify_interval_s=0.5,
        domain_internal_networks="127.0.0.0/8",  # the names point at this machine's loopback
    )  # fmt: skip
    to_active, to_https = [], []
    try:
        with serving(settings) as (url, app):
            operator = app.state.services.keys.bootstrap_operator("bench").token
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}, timeout=60)
            tenant = admin.post("/v1/tenants", json={"name": tenant_name}).json()
            key = admin.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key['token']}"}, timeout=60)
            api.post("/v1/apps", json={"name": "shop", "port": 8080}).raise_for_status()
            dep = api.post(
                "/v1/apps/shop/deployments", content=tar_gz(source("v1")), headers={"Content-Type": "application/gzip"}
            )
            while api.get(f"/v1/apps/shop/deployments/{dep.json()['id']}").json()["status"] not in ("running", "failed"):
                time.sleep(0.3)
            root = folder / "root.pem"
            root.write_text(acme.issuing_root())
            world = World(api, acme, traefik, root)
            for i in range(args.n):
                hostname = f"shop{i}.example.test"
                acme.point(hostname)
                started = time.monotonic()
                api.post("/v1/apps/shop/domains", json={"hostname": hostname}).raise_for_status()
                world.wait_domain(hostname, {"active"})
                to_active.append(time.monotonic() - started)
                world.wait_https(hostname)
                to_https.append(time.monotonic() - started)
                print(f"{hostname}: active {to_active[-1]:.2f}s, first HTTPS 200 {to_https[-1]:.2f}s", flush=True)
    finally:
        traefik.stop()
        acme.stop()
        cleanup_tenant(tenant_name)
    print(
        f"summary: domains add -> active {statistics.median(to_active):.2f}s, -> first HTTPS 200 through Pebble "
        f"{statistics.median(to_https):.2f}s (median of {args.n}; verify interval 0.5 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
