"""Proofs that a tenant controls a hostname, checked against the outside world.

- DNS: the TXT records at ``_moorage.<hostname>``, asked of the operator's nameservers
  (``host[:port]``, else the system's) with dnspython.
- HTTP: ``GET http://<hostname>/.well-known/moorage-verify/<token>`` on the platform's HTTP
  entrypoint. The name is resolved with the same nameservers and the request goes to exactly
  the addresses found (Host header set), so what answers is whatever the public DNS sends a
  browser to. Redirects are not followed: the proof must come from the name itself.

Nothing here knows tenants; the caller turns a ``CheckFailed`` into a reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver
import httpx

TXT_PREFIX = "_moorage"
VERIFY_PATH = "/.well-known/moorage-verify/"


class CheckFailed(Exception):
    """The proof is not (yet) there; the message says what was found."""


@dataclass(frozen=True)
class Nameserver:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit() or "]" in port:
            return cls(text.strip().strip("[]"))
        return cls(host.strip("[]"), int(port))


def parse_nameservers(text: str) -> tuple[Nameserver, ...]:
    return tuple(Nameserver.parse(part) for part in text.split(",") if part.strip())


class DomainChecks:
    def __init__(
        self,
        nameservers: Sequence[Nameserver] = (),
        *,
        http_port: int = 80,
        timeout_s: float = 5.0,
        internal_allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.http_port = http_port
        self.timeout_s = timeout_s
        # A tenant chooses the name and so where it points: the HTTP check never fetches from
        # a loopback, private or link-local address (the host's or the cloud's own services)
        # unless the operator's platform lives there.
        self.internal_allowed = tuple(internal_allowed)

    def _may_fetch(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip.is_global or any(ip in net for net in self.internal_allowed)

    def _resolver(self) -> dns.resolver.Resolver:
        if not self.nameservers:
            resolver = dns.resolver.Resolver()
        else:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [ns.host for ns in self.nameservers]
            resolver.nameserver_ports = {ns.host: ns.port for ns in self.nameservers}
        resolver.lifetime = resolver.timeout = self.timeout_s
        return resolver

    def _lookup(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = self._resolver().resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.DNSException as exc:
            raise CheckFailed(f"the DNS lookup of {name} ({rdtype}) failed: {type(exc).__name__}") from None
        if rdtype == "TXT":
            return [b"".join(r.strings).decode(errors="replace") for r in answer]
        return [r.to_text() for r in answer]

    def txt(self, hostname: str) -> list[str]:
        return self._lookup(f"{TXT_PREFIX}.{hostname}.", "TXT")

    def addresses(self, hostname: str) -> list[str]:
        return self._lookup(f"{hostname}.", "A") + self._lookup(f"{hostname}.", "AAAA")

    def check_txt(self, hostname: str, expected: str) -> None:
        found = self.txt(hostname)
        if expected not in found:
            shown = ", ".join(repr(v[:80]) for v in found[:3]) or "no TXT record"
            raise CheckFailed(f"{TXT_PREFIX}.{hostname} has {shown}, not the expected value")

    def check_http(self, hostname: str, token: str, expected: str) -> None:
        addresses = self.addresses(hostname)
        if not addresses:
            raise CheckFailed(f"{hostname} has no A or AAAA record")
        seen = []
        for address in addresses:
            if not self._may_fetch(address):
                seen.append(f"{address}: an internal address, not checked (MOORAGE_DOMAIN_INTERNAL_NETWORKS)")
                continue
            host = f"[{address}]" if ":" in address else address
            url = f"http://{host}:{self.http_port}{VERIFY_PATH}{token}"
            try:
                r = httpx.get(url, headers={"Host": hostname}, timeout=self.timeout_s, follow_redirects=False)
            except httpx.HTTPError as exc:
                seen.append(f"{address}: {type(exc).__name__}")
                continue
            if r.status_code == 200 and r.text.strip() == expected:
                return
            seen.append(f"{address}: HTTP {r.status_code}")
        raise CheckFailed(f"http://{hostname}{VERIFY_PATH}{token} did not answer the token ({'; '.join(seen)})")
