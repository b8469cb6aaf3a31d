"""Custom domains through the API with the proofs checked by a stand-in for the outside
world (``ScriptedChecks``, the ``ProofChecks`` port's fake; ``runtime.domain_checks`` is
checked against a real DNS server and Traefik in tests/e2e/test_domains_e2e.py): which
names are refused, one tenant per hostname, the state machine on a clock the test moves,
the route files Traefik reads, and the token URL."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from litestar import Litestar

from control.domain.domains import DomainConfig, DomainService, proof
from control.domain.errors import Invalid
from control.jobs.domains import DomainVerifier
from control.settings import Settings
from runtime.domain_checks import CheckFailed
from tests.conftest import Caller
from tests.control.deploy_world import Clock


@dataclass
class ScriptedChecks:
    """Fake of the ProofChecks port: a proof passes once the test publishes it."""

    txt: dict[str, str] = field(default_factory=dict)  # hostname -> the TXT value published
    http: dict[str, str] = field(default_factory=dict)  # hostname -> what its token URL answers
    asked: list[str] = field(default_factory=list)

    def check_txt(self, hostname: str, expected: str) -> None:
        self.asked.append(f"dns {hostname}")
        if self.txt.get(hostname) != expected:
            raise CheckFailed(f"_moorage.{hostname} has {self.txt.get(hostname)!r}, not the expected value")

    def check_http(self, hostname: str, token: str, expected: str) -> None:
        self.asked.append(f"http {hostname}")
        if self.http.get(hostname) != expected:
            raise CheckFailed(f"http://{hostname}/.well-known/moorage-verify/{token} did not answer the token")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    dynamic = tmp_path / "traefik-dynamic"
    dynamic.mkdir()
    return settings.with_overrides(
        traefik_dynamic_dir=dynamic,
        acme_email="ops@example.test",
        acme_storage=str(tmp_path / "acme.json"),
        traefik_log=str(tmp_path / "traefik.log"),
        domain_verify_timeout_s=60,
        domain_verify_interval_s=5,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checks() -> ScriptedChecks:
    return ScriptedChecks()


@pytest.fixture
def verifier(app: Litestar, clock: Clock, checks: ScriptedChecks) -> DomainVerifier:
    """The verifier as the control plane builds it, on the test's clock and checks."""
    live = app.state.services.custom_domains
    config: DomainConfig = live.domains.config
    return DomainVerifier(DomainService(live.domains.db, config, clock=clock), checks, live.routing)


@pytest.fixture
def web(tenant: Caller) -> str:
    assert tenant.post("/v1/apps", json={"name": "web", "port": 8080}).status_code == 201
    return "web"


def add(caller: Caller, hostname: str, app: str = "web", **body: object) -> dict[str, object]:
    r = caller.post(f"/v1/apps/{app}/domains", json={"hostname": hostname, **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def route_file(settings: Settings, domain_id: str) -> dict[str, object] | None:
    path = settings.traefik_dynamic_dir / f"{domain_id}.yml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


# -- what can be claimed ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hostname", "says"),
    [
        ("apps.test", "platform's own domain"),
        ("web.acme.apps.test", "platform's own domain"),
        ("localhost", "registered name"),
        ("api.localhost", "names this machine"),
        ("1.2.3.4", "IP address"),
        ("[::1]", "IP address"),
        ("*.example.com", "wildcards"),
        ("ex ample.com", "not a valid DNS name"),
        ("-shop.example.com", "not a valid DNS name"),
        ("shop..example.com", "not a valid DNS name"),
        ("com", "registered name"),
        ("a" * 64 + ".example.com", "not a valid DNS name"),
    ],
)
def test_names_that_cannot_be_custom_domains_are_422_and_make_nothing(tenant: Caller, web: str, hostname: str, says: str) -> None:
    r = tenant.post("/v1/apps/web/domains", json={"hostname": hostname})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert says in r.json()["detail"] and [e["field"] for e in r.json()["errors"]] == ["hostname"], r.json()
    assert tenant.get("/v1/apps/web/domains").json()["items"] == []


def test_a_300_character_name_is_refused_by_the_schema(tenant: Caller, web: str) -> None:
    r = tenant.post("/v1/apps/web/domains", json={"hostname": ("a" * 60 + ".") * 5 + "com"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert tenant.get("/v1/apps/web/domains").json()["items"] == []


def test_idna_names_are_stored_as_punycode_and_found_either_way(tenant: Caller, web: str) -> None:
    made = add(tenant, "Bücher.Example.com.")
    assert made["hostname"] == "xn--bcher-kva.example.com" and made["status"] == "pending"
    assert tenant.get("/v1/apps/web/domains/xn--bcher-kva.example.com").json()["id"] == made["id"]


def test_one_tenant_holds_a_hostname_at_a_time(tenant: Caller, new_tenant, web: str) -> None:  # type: ignore[no-untyped-def]
    made = add(tenant, "shop.example.com")
    again = tenant.post("/v1/apps/web/domains", json={"hostname": "SHOP.example.com"})
    assert again.status_code == 409 and again.json()["code"] == "hostname-taken"
    other: Caller = new_tenant("rival")
    assert other.post("/v1/apps", json={"name": "web", "port": 8080}).status_code == 201
    stolen = other.post("/v1/apps/web/domains", json={"hostname": "shop.example.com"})
    assert stolen.status_code == 409 and "another tenant" in stolen.json()["detail"]
    for path in (f"/v1/apps/web/domains/{made['id']}", "/v1/apps/web/domains/shop.example.com"):
        assert other.get(path).status_code == 404
        assert other.delete(path).status_code == 404
    assert other.post(f"/v1/apps/web/domains/{made['id']}/verify").status_code == 404
    assert other.get("/v1/apps/web/domains").json()["items"] == []
    assert tenant.get(f"/v1/apps/web/domains/{made['id']}").status_code == 200


def test_a_method_the_operator_does_not_accept_is_422(app: Litestar, tenant: Caller, web: str) -> None:
    assert add(tenant, "a.example.com")["verification"]["method"] == "http"  # type: ignore[index]
    dns = add(tenant, "b.example.com", method="dns")["verification"]
    assert dns == {  # type: ignore[comparison-overlap]
        "method": "dns",
        "instructions": f"Create a TXT record _moorage.b.example.com with the value {dns['expected_body']}",  # type: ignore[index]
        "record_name": "_moorage.b.example.com",
        "record_value": dns["expected_body"],  # type: ignore[index]
        "url": None,
        "expected_body": dns["expected_body"],  # type: ignore[index]
    }
    assert tenant.post("/v1/apps/web/domains", json={"hostname": "c.example.com", "method": "ftp"}).status_code == 422
    # An operator who accepts only TXT records: the HTTP token is refused, naming the field.
    live = app.state.services.custom_domains.domains
    dns_only = DomainService(live.db, DomainConfig(base_domain="apps.test", methods=("dns",)))
    assert dns_only.create(tenant.tenant_id, "web", "d.example.com", method=None, hsts=False).method == "dns"  # its default
    with pytest.raises(Invalid, match=r"'method' must be one of \['dns'\]"):
        dns_only.create(tenant.tenant_id, "web", "e.example.com", method="http", hsts=False)
    assert tenant.get("/v1/apps/web/domains/e.example.com").status_code == 404


# -- proving it -------------------------------------------------------------------------------
def test_a_dns_proof_makes_the_domain_active_and_routed_with_https(
    tenant: Caller, web: str, verifier: DomainVerifier, clock: Clock, checks: ScriptedChecks, settings: Settings
) -> None:
    made = add(tenant, "shop.example.com", method="dns", hsts=True)
    verifier.fire_due()
    body = tenant.get(f"/v1/apps/web/domains/{made['id']}").json()
    assert body["status"] == "verifying" and "not yet" in body["reason"]
    assert route_file(settings, made["id"]) is None  # nothing is routed before the proof
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    clock.advance(5)
    [checked] = verifier.fire_due()
    assert checked.status == "active"
    body = tenant.get(f"/v1/apps/web/domains/{made['id']}").json()
    assert body["status"] == "active" and body["verified_at"] and body["https"] is True
    assert body["certificate"]["state"] == "pending"  # Traefik has not obtained it (no store here)
    routes = route_file(settings, made["id"])["http"]  # type: ignore[index]
    app_id = tenant.get("/v1/apps/web").json()["id"]
    secure, redirect = routes["routers"][made["id"]], routes["routers"][f"{made['id']}_http"]
    assert secure["rule"] == "Host(`shop.example.com`)" and secure["entryPoints"] == ["websecure"]
    assert secure["tls"] == {"certResolver": "letsencrypt", "domains": [{"main": "shop.example.com"}]}
    assert secure["service"] == redirect["service"] == app_id and redirect["entryPoints"] == ["web"]
    assert routes["middlewares"][f"{made['id']}_https"] == {"redirectScheme": {"scheme": "https", "permanent": True}}
    assert routes["middlewares"][f"{made['id']}_hsts"] == {"headers": {"stsSeconds": 31536000}}


def test_an_unproven_domain_fails_at_its_deadline_saying_what_to_create_and_lets_go_of_the_name(
    tenant: Caller, new_tenant, web: str, verifier: DomainVerifier, clock: Clock, checks: ScriptedChecks, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    made = add(tenant, "shop.example.com", method="dns")
    checks.txt["shop.example.com"] = "moorage-verify=someone-elses-token"
    for _ in range(14):  # past the 60 s of checks, every 5 s
        verifier.fire_due()
        clock.advance(5)
    body = tenant.get(f"/v1/apps/web/domains/{made['id']}").json()
    assert body["status"] == "failed", body
    assert (
        f"create a TXT record _moorage.shop.example.com with the value {made['verification']['record_value']}" in body["reason"]
    )  # type: ignore[index]
    assert route_file(settings, made["id"]) is None
    rival: Caller = new_tenant("rival")
    assert rival.post("/v1/apps", json={"name": "web", "port": 8080}).status_code == 201
    assert add(rival, "shop.example.com")["status"] == "pending"  # the real owner can claim it now
    retried = tenant.post(f"/v1/apps/web/domains/{made['id']}/verify")
    assert retried.status_code == 409 and retried.json()["code"] == "hostname-taken"


def test_verify_looks_again_after_a_failure(
    tenant: Caller, web: str, verifier: DomainVerifier, clock: Clock, checks: ScriptedChecks
) -> None:
    made = add(tenant, "shop.example.com", method="dns")
    for _ in range(14):
        verifier.fire_due()
        clock.advance(5)
    assert tenant.get(f"/v1/apps/web/domains/{made['id']}").json()["status"] == "failed"
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    again = tenant.post(f"/v1/apps/web/domains/{made['id']}/verify").json()
    assert again["status"] == "pending" and again["reason"] is None
    verifier.fire_due()
    assert tenant.get(f"/v1/apps/web/domains/{made['id']}").json()["status"] == "active"


def test_the_token_url_answers_only_a_waiting_domain_on_its_own_hostname(
    tenant: Caller, web: str, verifier: DomainVerifier, clock: Clock, checks: ScriptedChecks, settings: Settings
) -> None:
    made = add(tenant, "shop.example.com")
    token = made["verification"]["url"].rsplit("/", 1)[1]  # type: ignore[index]
    url = f"/.well-known/moorage-verify/{token}"
    r = tenant.client.get(url, headers={"Host": "shop.example.com"})  # no key: Traefik forwards a stranger's request
    assert r.status_code == 200 and r.text == proof(token)
    assert tenant.client.get(url, headers={"Host": "other.example.com"}).status_code == 404
    assert (
        tenant.client.get("/.well-known/moorage-verify/not-a-token-at-all", headers={"Host": "shop.example.com"}).status_code
        == 404
    )
    verifier.fire_due()  # the token route is written before the first HTTP check
    token_route = yaml.safe_load((settings.traefik_dynamic_dir / "moorage_verify.yml").read_text())["http"]
    assert token_route["services"]["moorage_verify"]["loadBalancer"]["servers"] == [{"url": f"http://127.0.0.1:{settings.port}"}]
    checks.http["shop.example.com"] = proof(token)
    clock.advance(5)
    verifier.fire_due()
    assert tenant.client.get(url, headers={"Host": "shop.example.com"}).status_code == 404  # proven: no longer answered
    assert not (settings.traefik_dynamic_dir / "moorage_verify.yml").exists()  # nothing waits for a token now


def test_removing_a_domain_removes_its_route_at_once(
    tenant: Caller, web: str, verifier: DomainVerifier, checks: ScriptedChecks, settings: Settings
) -> None:
    made = add(tenant, "shop.example.com", method="dns")
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    verifier.fire_due()
    assert route_file(settings, made["id"]) is not None
    assert tenant.delete("/v1/apps/web/domains/shop.example.com").status_code == 204
    assert route_file(settings, made["id"]) is None
    assert tenant.get(f"/v1/apps/web/domains/{made['id']}").status_code == 404
    assert verifier.sweep() == []  # nothing left for the sweep to do


def test_the_sweep_restores_a_lost_route_file_and_removes_a_stale_one(
    tenant: Caller, web: str, verifier: DomainVerifier, checks: ScriptedChecks, settings: Settings
) -> None:
    made = add(tenant, "shop.example.com", method="dns")
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    verifier.fire_due()
    path = settings.traefik_dynamic_dir / f"{made['id']}.yml"
    body = path.read_text()
    path.unlink()
    stale = settings.traefik_dynamic_dir / "dom_01stale.yml"
    stale.write_text(body.splitlines()[0] + "\nhttp: {}\n")  # ours (the owner line), no domain behind it
    assert sorted(verifier.sweep()) == ["removed domain route dom_01stale", "wrote domain route shop.example.com"]
    assert path.read_text() == body and not stale.exists()


def _store_certificate(path: Path, hostname: str, *, days_left: float) -> None:
    """An acme.json as Traefik writes it, with one self-signed certificate for ``hostname``."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test ACME Issuer")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(0xABC).not_valid_before(now - timedelta(days=80)).not_valid_after(now + timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    entry = {
        "domain": {"main": hostname},
        "certificate": base64.b64encode(pem).decode(),
        "key": "bm90IHJlYWQ=",
        "Store": "default",
    }
    path.write_text(json.dumps({"letsencrypt": {"Account": {}, "Certificates": [entry]}}))


def test_a_certificate_that_failed_to_renew_is_reported_and_nothing_is_taken_down(
    app: Litestar,
    tenant: Caller,
    operator: Caller,
    web: str,
    verifier: DomainVerifier,
    checks: ScriptedChecks,
    settings: Settings,
) -> None:
    made = add(tenant, "shop.example.com", method="dns")
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    verifier.fire_due()
    assert tenant.client.get("/readyz").json()["checks"]["certificates"] == "ok"
    _store_certificate(Path(settings.acme_storage), "shop.example.com", days_left=90)
    issued = tenant.get("/v1/apps/web/domains/shop.example.com").json()["certificate"]
    assert issued["state"] == "issued" and issued["issuer"] == "CN=Test ACME Issuer" and issued["serial"] == "abc"
    _store_certificate(Path(settings.acme_storage), "shop.example.com", days_left=5)
    assert tenant.get("/v1/apps/web/domains/shop.example.com").json()["certificate"]["state"] == "expiring"
    ready = tenant.client.get("/readyz").json()
    assert ready["status"] == "degraded" and "shop.example.com" in ready["checks"]["certificates"]
    assert [p["component"] for p in ready["problems"]].count("certificates") == 1
    scraped = operator.get("/metrics").text
    assert 'moorage_certificate_not_after_seconds{hostname="shop.example.com"}' in scraped
    assert route_file(settings, made["id"]) is not None  # still routed


def test_an_operators_wildcard_certificate_becomes_traefiks_default(app: Litestar, settings: Settings, tmp_path: Path) -> None:
    from control.bootstrap import bootstrap

    wild = settings.with_overrides(tls_cert_file=str(tmp_path / "wild.pem"), tls_key_file=str(tmp_path / "wild.key"))
    routing = bootstrap(wild).custom_domains.routing
    assert routing.converge([], tokens_wanted=False) == ["wrote the platform's TLS certificate"]
    doc = yaml.safe_load((settings.traefik_dynamic_dir / "moorage_tls.yml").read_text())
    assert doc["tls"]["stores"]["default"]["defaultCertificate"] == {
        "certFile": f"{tmp_path}/wild.pem",
        "keyFile": f"{tmp_path}/wild.key",
    }
    assert routing.converge([], tokens_wanted=False) == []  # unchanged: not rewritten
    with pytest.raises(Exception, match="go together"):
        settings.with_overrides(tls_cert_file=str(tmp_path / "wild.pem"))


def test_traefiks_last_acme_error_is_reported_until_a_newer_certificate_arrives(
    tenant: Caller, web: str, verifier: DomainVerifier, checks: ScriptedChecks, settings: Settings
) -> None:
    made = add(tenant, "shop.example.com", method="dns")
    checks.txt["shop.example.com"] = made["verification"]["record_value"]  # type: ignore[index]
    verifier.fire_due()
    failure = {
        "level": "error",
        "time": (datetime.now(UTC) - timedelta(days=100)).isoformat().replace("+00:00", "Z"),
        "message": "Unable to obtain ACME certificate for domains",
        "domains": ["shop.example.com"],
        "error": "acme: error: 400 :: urn:ietf:params:acme:error:dns :: NXDOMAIN looking up A for shop.example.com",
    }
    Path(settings.traefik_log).write_text('{"level":"info","message":"Configuration loaded"}\n' + json.dumps(failure) + "\n")
    cert = tenant.get("/v1/apps/web/domains/shop.example.com").json()["certificate"]
    assert cert["state"] == "pending" and "NXDOMAIN" in cert["last_error"] and cert["last_error_at"]
    _store_certificate(Path(settings.acme_storage), "shop.example.com", days_left=90)  # valid from after the failure
    cert = tenant.get("/v1/apps/web/domains/shop.example.com").json()["certificate"]
    assert cert["state"] == "issued" and cert["last_error"] is None
