"""Custom domains end to end, with no stand-in for ACME or DNS: the control plane on a real
socket, real Traefik with an ACME resolver pointed at Pebble, pebble-challtestsrv as the
only nameserver (for the control plane's checks and for Pebble's validation alike), and an
app deployed through the real pipeline under runsc.

1. The HTTP token: the name points at 127.0.0.1, the control plane fetches the token URL
   through Traefik, the domain turns active; Traefik then gets a certificate from Pebble
   (HTTP-01 validated for real) and ``https://shop.example.test`` serves the app with a
   certificate that verifies against Pebble's root, hostname checked; HTTP answers with a
   permanent redirect to HTTPS; the domain reports the issuer and ``not_after``.
2. The DNS TXT record: right → active; wrong → failed with a reason naming the record.
3. Traefik restarted: the same certificate is served and Pebble got no new order.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.traefik import TraefikProcess
from tests.acme_servers import AcmeTestServers, binaries_present
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import cleanup_tenant, e2e_settings
from tests.live_server import free_port, serving
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
TENANT = f"e2e-dom-{RUN_ID}"


@dataclass
class World:
    api: httpx.Client
    acme: AcmeTestServers
    traefik: TraefikProcess
    root: Path  # Pebble's issuing root, PEM

    def wait_domain(self, hostname: str, done: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline, body = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            body = self.api.get(f"/v1/apps/shop/domains/{hostname}").json()
            if body["status"] in done:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{hostname} never reached {done}: {body}")

    def https(self, hostname: str, path: str = "/") -> tuple[int, str, dict[str, Any]]:
        """GET over TLS to Traefik's HTTPS entrypoint with SNI ``hostname``, trusting only
        Pebble's root and checking the hostname, as a browser would."""
        context = ssl.create_default_context(cafile=str(self.root))
        raw = socket.create_connection(("127.0.0.1", self.traefik.https_port), timeout=5)
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            cert = tls.getpeercert()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace"), cert  # type: ignore[return-value]

    def wait_https(self, hostname: str, timeout: float = 60) -> tuple[int, str, dict[str, Any]]:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                status, body, cert = self.https(hostname)
                if status == 200:
                    return status, body, cert
                last = f"HTTP {status}"
            except (OSError, ssl.SSLError) as exc:  # Traefik's default certificate until Pebble's arrives
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
        raise AssertionError(f"https://{hostname} never answered 200 with a trusted certificate: {last}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not binaries_present():
        pytest.fail("pebble and pebble-challtestsrv are missing: MOORAGE_TEST_TOOLS=1 bash deploy/host-setup.sh installs them")
    folder = tmp_path_factory.mktemp("e2e-domains")
    acme_dir = folder / "acme"
    acme_dir.mkdir()
    acme = AcmeTestServers(acme_dir)
    traefik = TraefikProcess(
        acme_email="ops@example.test",
        acme_ca_server=acme.directory_url,
        acme_storage=folder / "acme.json",
        acme_ca_bundle=acme.ca_bundle,
    )
    acme.start(http_port=traefik.http_port)  # Pebble validates HTTP-01 on Traefik's web entrypoint
    traefik.start()
    settings = e2e_settings(
        folder / "data",
        traefik,
        port=free_port(),
        acme_email="ops@example.test",
        acme_storage=str(folder / "acme.json"),
        domain_nameservers=acme.nameserver,
        domain_internal_networks="127.0.0.0/8",  # the names point at this machine's loopback
        domain_http_port=traefik.http_port,
        domain_verify_interval_s=0.5,
        domain_verify_timeout_s=6,
        tls_cert_resolver="letsencrypt",  # the platform's own hostnames over HTTPS too, per host
        traefik_log=str(traefik.log_path),
    )
    try:
        with serving(settings) as (url, app):
            operator = app.state.services.keys.bootstrap_operator("e2e-domains").token
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}, timeout=60)
            tenant = admin.post("/v1/tenants", json={"name": TENANT}).json()
            key = admin.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}).json()
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key['token']}"}, timeout=60)
            # The platform's wildcard record, there before any app: Traefik orders a route's
            # certificate when the route appears, and does not retry a failed order by itself.
            acme.point(f"shop.{TENANT}.apps.test")
            assert api.post("/v1/apps", json={"name": "shop", "port": 8080}).status_code == 201
            dep = api.post(
                "/v1/apps/shop/deployments", content=tar_gz(source("v1")), headers={"Content-Type": "application/gzip"}
            )
            assert dep.status_code == 202, dep.text
            deadline = time.monotonic() + 240
            while (status := api.get(f"/v1/apps/shop/deployments/{dep.json()['id']}").json()["status"]) not in (
                "running", "failed", "cancelled",
            ) and time.monotonic() < deadline:  # fmt: skip
                time.sleep(0.3)
            assert status == "running", status
            root = folder / "pebble-root.pem"
            root.write_text(acme.issuing_root())
            yield World(api, acme, traefik, root)
    finally:
        traefik.stop()
        acme.stop()
        cleanup_tenant(TENANT)


def test_an_http_proof_then_a_pebble_certificate_serves_the_app_over_https(world: World) -> None:
    world.acme.point("shop.example.test")
    started = time.monotonic()
    r = world.api.post("/v1/apps/shop/domains", json={"hostname": "shop.example.test", "method": "http", "hsts": True})
    assert r.status_code == 201 and r.json()["status"] == "pending", r.text
    active = world.wait_domain("shop.example.test", {"active", "failed"})
    assert active["status"] == "active", active
    status, body, cert = world.wait_https("shop.example.test")
    first_https_s = time.monotonic() - started
    assert status == 200 and body.startswith("version=v1"), body
    issuer = dict(pair[0] for pair in cert["issuer"])
    assert "Pebble" in issuer.get("commonName", ""), cert["issuer"]
    assert ("DNS", "shop.example.test") in cert["subjectAltName"]

    plain = httpx.get(
        f"http://127.0.0.1:{world.traefik.http_port}/some/path?q=1", headers={"Host": "shop.example.test"}, timeout=5
    )
    assert plain.status_code in (301, 308) and plain.headers["location"].startswith("https://shop.example.test"), plain

    deadline = time.monotonic() + 20  # Traefik writes its store right after the order
    while (body_now := world.api.get("/v1/apps/shop/domains/shop.example.test").json())["certificate"]["state"] != "issued":
        assert time.monotonic() < deadline, body_now
        time.sleep(0.3)
    assert "Pebble" in body_now["certificate"]["issuer"] and body_now["certificate"]["not_after"]
    print(f"\ndomains add -> first HTTPS 200 through Pebble: {first_https_s:.1f}s")


def test_the_platforms_own_hostname_gets_https_from_the_resolver_too(world: World) -> None:
    hostname = f"shop.{TENANT}.apps.test"
    status, body, cert = world.wait_https(hostname)
    assert status == 200 and body.startswith("version=v1") and ("DNS", hostname) in cert["subjectAltName"]
    plain = httpx.get(f"http://127.0.0.1:{world.traefik.http_port}/", headers={"Host": hostname}, timeout=5)
    assert plain.status_code == 200  # HTTP still serves: the deploy's checks go through it


def test_a_dns_txt_proof_passes_and_a_wrong_one_fails_naming_the_record(world: World) -> None:
    made = world.api.post("/v1/apps/shop/domains", json={"hostname": "txt.example.test", "method": "dns"}).json()
    world.acme.set_txt("_moorage.txt.example.test", made["verification"]["record_value"])
    assert world.wait_domain("txt.example.test", {"active", "failed"})["status"] == "active"
    # Proven by TXT, but no A record: Pebble cannot validate HTTP-01, and the domain says so.
    deadline = time.monotonic() + 30
    while not (cert := world.api.get("/v1/apps/shop/domains/txt.example.test").json()["certificate"])["last_error"]:
        assert time.monotonic() < deadline, cert
        time.sleep(0.3)
    assert cert["state"] == "pending" and "txt.example.test" in cert["last_error"], cert

    wrong = world.api.post("/v1/apps/shop/domains", json={"hostname": "bad.example.test", "method": "dns"}).json()
    world.acme.set_txt("_moorage.bad.example.test", "moorage-verify=not-the-token")
    failed = world.wait_domain("bad.example.test", {"active", "failed"}, timeout=30)
    assert failed["status"] == "failed", failed
    assert (
        f"create a TXT record _moorage.bad.example.test with the value {wrong['verification']['record_value']}"
        in failed["reason"]
    )
    assert "'moorage-verify=not-the-token'" in failed["reason"]  # what was found


def test_after_a_traefik_restart_the_certificate_is_served_with_no_new_order(world: World) -> None:
    for other in ("txt.example.test", "bad.example.test"):  # only shop's certificate is in play from here
        assert world.api.delete(f"/v1/apps/shop/domains/{other}").status_code in (204, 404)
    time.sleep(1.5)  # Traefik's reload (its provider throttle)
    _, _, before = world.wait_https("shop.example.test")
    orders = world.acme.orders()
    assert orders >= 1
    world.traefik.crash()
    world.traefik.start()
    _, _, after = world.wait_https("shop.example.test")
    assert after["serialNumber"] == before["serialNumber"]
    time.sleep(2)  # long enough for Traefik to have ordered again, had it lost the store
    assert world.acme.orders() == orders
    store = world.traefik.opts.acme_storage
    assert store is not None and oct(store.stat().st_mode & 0o777) == "0o600"  # it holds the private keys
