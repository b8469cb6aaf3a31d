"""The ownership checks against a real DNS server (pebble-challtestsrv, programmed by the
test) and a real HTTP server: TXT values as published, A records, and the HTTP token fetched
from exactly the addresses the name resolves to, never from an internal one unless the
operator allows it."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.domain_checks import CheckFailed, DomainChecks, Nameserver, parse_nameservers
from tests.acme_servers import AcmeTestServers, binaries_present
from tests.live_server import free_port

TOKEN = "t0ken-for-the-checks-0123456789"


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeTestServers]:
    if not binaries_present():
        pytest.fail("pebble-challtestsrv is missing: MOORAGE_TEST_TOOLS=1 bash deploy/host-setup.sh installs it")
    servers = AcmeTestServers(tmp_path_factory.mktemp("dns"))
    servers.start(http_port=free_port())
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[int]:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == f"/.well-known/moorage-verify/{TOKEN}" and self.headers["Host"] == "shop.example.test"
            body = f"moorage-verify={TOKEN}".encode() if ok else b"no"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_nameservers_parse_with_and_without_ports() -> None:
    assert parse_nameservers("127.0.0.1:8053, 9.9.9.9,[::1]:53") == (
        Nameserver("127.0.0.1", 8053), Nameserver("9.9.9.9", 53), Nameserver("::1", 53),
    )  # fmt: skip


def test_txt_records_are_read_as_published(dns: AcmeTestServers) -> None:
    checks = DomainChecks(parse_nameservers(dns.nameserver), timeout_s=2)
    dns.set_txt("_moorage.txt.example.test", "moorage-verify=abc")
    assert checks.txt("txt.example.test") == ["moorage-verify=abc"]
    checks.check_txt("txt.example.test", "moorage-verify=abc")
    with pytest.raises(CheckFailed, match="'moorage-verify=abc', not the expected value"):
        checks.check_txt("txt.example.test", "moorage-verify=other")
    with pytest.raises(CheckFailed, match="no TXT record"):
        checks.check_txt("nothing.example.test", "moorage-verify=abc")


def test_the_http_token_is_fetched_from_the_resolved_address_only_when_it_may_be(dns: AcmeTestServers, token_server: int) -> None:
    dns.point("shop.example.test", "127.0.0.1")
    public_only = DomainChecks(parse_nameservers(dns.nameserver), http_port=token_server, timeout_s=2)
    with pytest.raises(CheckFailed, match=r"127\.0\.0\.1: an internal address, not checked"):
        public_only.check_http("shop.example.test", TOKEN, f"moorage-verify={TOKEN}")  # would pass if it fetched
    allowed = DomainChecks(
        parse_nameservers(dns.nameserver),
        http_port=token_server,
        timeout_s=2,
        internal_allowed=[ipaddress.ip_network("127.0.0.0/8")],
    )
    allowed.check_http("shop.example.test", TOKEN, f"moorage-verify={TOKEN}")
    with pytest.raises(CheckFailed, match="HTTP 404"):
        allowed.check_http("shop.example.test", "some-other-token-0123456789", "moorage-verify=some-other")
    with pytest.raises(CheckFailed, match="no A or AAAA record"):
        allowed.check_http("unpointed.example.test", TOKEN, f"moorage-verify={TOKEN}")


def test_an_unreachable_nameserver_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    checks = DomainChecks([Nameserver("127.0.0.1", free_port())], timeout_s=0.5)
    with pytest.raises(CheckFailed, match="DNS lookup"):
        checks.txt("shop.example.test")
