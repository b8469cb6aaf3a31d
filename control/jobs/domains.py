"""Custom domains on the ingress: their Traefik route files, and the verifier that looks for
ownership proofs (``control.domain.domains`` holds the rules).

Each active domain has a route file of its own, keyed by the domain's id, that sends the
hostname to its app's service (defined by the app's route file): HTTPS through the ACME
resolver with a redirect from HTTP, or HTTP only where no resolver is set up. One more file
sends ownership-token URLs on any hostname to the control plane. The files carry an owner
line of their own (``<instance>.domains``), so the app-route sweep never takes them for
orphans; this module's sweep keeps them exactly the active domains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from control.clock import utcnow
from control.domain.domains import ACTIVE, FAILED, HTTP, Check, DomainService, ProofChecks
from control.domain.records import Domain
from control.jobs.scheduler import CronScheduler
from runtime.certificates import AcmeError, StoredCertificate, acme_errors, read_store
from runtime.router import VERIFY_KEY, DomainRoute, Router, atomic_write
from runtime.traefik import WEB_ENTRYPOINT, WEBSECURE_ENTRYPOINT

log = structlog.get_logger("moorage.domains")
EXPIRING = timedelta(days=14)  # a certificate this close to its end is reported
PLATFORM_TLS_KEY = "moorage_tls"  # the file naming the operator's wildcard certificate


class DomainRouting:
    def __init__(
        self,
        router: Callable[[], Router],
        instance: Callable[[], str],
        *,
        cert_resolver: str | None,
        verify_upstream: str,
        platform_tls: tuple[Path, Path] | None = None,
    ) -> None:
        self._router = router  # made on first use, as the runtime's adapters (and their breakers)
        self.instance = instance
        self.platform_tls = platform_tls  # the operator's wildcard certificate and key files
        self.cert_resolver = cert_resolver
        self.verify_upstream = verify_upstream

    @property
    def router(self) -> Router:
        return self._router()

    @property
    def owner(self) -> str:
        return f"{self.instance()}.domains"

    def body(self, domain: Domain) -> str:
        route = DomainRoute(domain.id, domain.hostname, domain.app_id, hsts=domain.hsts)
        doc = self.router.render_domain(
            route, cert_resolver=self.cert_resolver, web=WEB_ENTRYPOINT, websecure=WEBSECURE_ENTRYPOINT
        )
        return self.router.file_body(doc, owner=self.owner)

    def _write(self, key: str, body: str) -> bool:
        path = self.router.path_for(key)
        try:
            if path.read_text() == body:
                return False
        except FileNotFoundError:
            pass
        self.router.guard.call(atomic_write, path, body, idempotent=True)
        return True

    def write(self, domain: Domain) -> bool:
        return self._write(domain.id, self.body(domain))

    def remove(self, domain_id: str) -> bool:
        removed: bool = self.router.remove(domain_id)
        return removed

    def forget(self, domain_id: str) -> None:
        """A removed domain's route goes now; what fails here, the sweep removes."""
        try:
            self.remove(domain_id)
        except OSError as exc:
            log.warning("domain_route_not_removed", domain_id=domain_id, error=str(exc))

    def write_verify_route(self) -> bool:
        doc = self.router.render_verify(self.verify_upstream, web=WEB_ENTRYPOINT)
        return self._write(VERIFY_KEY, self.router.file_body(doc, owner=self.owner))

    def converge(self, active: Sequence[Domain], *, tokens_wanted: bool) -> list[str]:
        """Route files exactly for the active domains, and the token route while a domain
        waits for an HTTP proof: what changed."""
        actions = []
        if tokens_wanted and self.write_verify_route():
            actions.append("wrote the ownership-token route")
        wanted = {d.id for d in active} | ({VERIFY_KEY} if tokens_wanted else set())
        if self.platform_tls is not None:
            wanted.add(PLATFORM_TLS_KEY)
            doc = self.router.render_platform_tls(*self.platform_tls)
            if self._write(PLATFORM_TLS_KEY, self.router.file_body(doc, owner=self.owner)):
                actions.append("wrote the platform's TLS certificate")
        for domain in active:
            if self.write(domain):
                actions.append(f"wrote domain route {domain.hostname}")
        for key in self.router.owned(self.owner):
            if key not in wanted and self.remove(key):
                actions.append(f"removed domain route {key}")
        return actions


class DomainVerifier:
    """Ticked by a scheduler: one check of each domain due for one; a domain that passes is
    routed at once (the reconciler's sweep would within its interval anyway)."""

    def __init__(self, domains: DomainService, checks: ProofChecks, routing: DomainRouting) -> None:
        self.domains = domains
        self.checks = checks
        self.routing = routing

    def fire_due(self) -> Sequence[Check]:
        due = self.domains.due()
        if not due:
            return []
        if any(d.method == HTTP for d in due):
            self.routing.write_verify_route()  # the token URL must reach us before the first check
        checked = self.domains.check_all(self.checks, due)
        if any(c.status in (ACTIVE, FAILED) for c in checked):
            self.sweep()
        return checked

    def sweep(self) -> list[str]:
        return self.routing.converge(self.domains.active(), tokens_wanted=self.domains.awaiting_http())


@dataclass(frozen=True)
class CustomDomains:
    domains: DomainService
    routing: DomainRouting  # route files of active domains, removed with them
    verifier: CronScheduler  # looks for ownership proofs of domains waiting for one
    store: Path  # Traefik's ACME store (acme.json), read for certificate state
    traefik_log: Path | None = None  # Traefik's JSON log, read for the last ACME error per name

    def certificates(self) -> dict[str, StoredCertificate]:
        return read_store(self.store)

    def acme_errors(self) -> dict[str, AcmeError]:
        return {} if self.traefik_log is None else acme_errors(self.traefik_log)

    def certificate_ends(self) -> dict[str, datetime]:
        """Active domains' certificates in Traefik's store: hostname → ``not_after``."""
        if not self.domains.config.tls:
            return {}
        stored = self.certificates()
        return {d.hostname: stored[d.hostname].not_after for d in self.domains.active() if d.hostname in stored}

    def expiring(self, within: timedelta = EXPIRING) -> dict[str, datetime]:
        """Certificates that end within ``within``: Traefik renews 30 days ahead, so one this
        close has failed to renew (the domain still serves with it until it ends)."""
        limit = utcnow() + within
        return {host: end for host, end in self.certificate_ends().items() if end <= limit}
