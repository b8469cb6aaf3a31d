"""Custom domains: an app served on a hostname of the tenant's own, once the tenant proves it
controls the name.

A domain moves ``pending`` (made, nothing checked yet) → ``verifying`` (the proof is looked
for every ``verify_interval``, until ``verify_until``) → ``active`` (routed; with ACME set up,
Traefik obtains and renews its certificate) | ``failed`` (the reason says which record or
token was missing). ``POST .../verify`` starts the checks again.

Proofs, as the operator allows (``MOORAGE_DOMAIN_VERIFY_METHODS``):
- ``http``: ``http://<hostname>/.well-known/moorage-verify/<token>`` answers
  ``moorage-verify=<token>``. The platform's own Traefik sends that path, on any hostname,
  to the control plane, which answers for a domain waiting for its proof: so the check
  passes exactly when the name's DNS points at this platform.
- ``dns``: a TXT record ``_moorage.<hostname>`` holding ``moorage-verify=<token>``.

One tenant holds a hostname at a time: a second claim is 409 whoever makes it, and a failed
claim lets go of the name, so nobody squats a hostname they could not prove. The platform's
base domain and its subdomains, IP literals, wildcards, ``localhost`` and names that are not
DNS names are refused; names are stored as IDNA (punycode), as browsers send them.
"""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
import ipaddress
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import idna
import structlog

from control.clock import utcnow
from control.domain.errors import Conflict, Invalid, NotFound, QuotaExceeded
from control.domain.records import Domain, Page
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import AppRepository
from control.store.repositories.domains import DomainRepository
from runtime.domain_checks import CheckFailed

log = structlog.get_logger("moorage.domains")

PENDING, VERIFYING, ACTIVE, FAILED = "pending", "verifying", "active", "failed"
HTTP, DNS = "http", "dns"
METHODS = (HTTP, DNS)
TXT_NAME = "_moorage"
VERIFY_PATH = "/.well-known/moorage-verify/"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def proof(token: str) -> str:
    """What the token URL answers and the TXT record holds."""
    return f"moorage-verify={token}"


def normalise_hostname(raw: str, *, base_domain: str) -> str:
    """The name as stored and routed (lower-case IDNA, no trailing dot); 422 naming the rule."""

    def refuse(why: str) -> Invalid:
        return Invalid(
            f"'hostname' {raw[:80]!r} cannot be a custom domain: {why}.",
            errors=[{"field": "hostname", "message": why}],
        )

    text = raw.strip().rstrip(".")
    if not text:
        raise refuse("it is empty")
    if "*" in text:
        raise refuse("wildcards are not supported; add each hostname")
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise refuse("an IP address is not a domain; point a DNS name at the platform")
    if len(text) > 253:
        raise refuse("a DNS name has at most 253 characters")
    try:
        name = idna.encode(text, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise refuse(f"not a valid DNS name ({exc})") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise refuse("not a valid DNS name (labels of letters, digits and inner hyphens, at most 63 characters each)")
    if len(labels) < 2 or labels[-1].isdigit():
        raise refuse("a custom domain needs a registered name such as shop.example.com")
    if labels[-1] == "localhost":
        raise refuse("it names this machine")
    base = base_domain.strip(".").lower()
    if base and (name == base or name.endswith("." + base)):
        raise refuse(f"names under the platform's own domain ({base}) are the platform's; every app already has one")
    return name


@dataclass(frozen=True)
class DomainConfig:
    base_domain: str
    methods: tuple[str, ...] = METHODS  # what the operator accepts; the first is the default
    verify_for: timedelta = timedelta(minutes=15)  # how long the proof is looked for
    verify_interval: timedelta = timedelta(seconds=10)
    max_per_app: int = 20
    tls: bool = False  # an ACME resolver is set up: active domains get HTTPS


class ProofChecks(Protocol):
    """The outside world's answer (``runtime.domain_checks``); raises ``CheckFailed``."""

    def check_txt(self, hostname: str, expected: str) -> None: ...

    def check_http(self, hostname: str, token: str, expected: str) -> None: ...


@dataclass(frozen=True)
class Check:
    domain_id: str
    hostname: str
    status: str
    reason: str | None


class DomainService:
    def __init__(self, db: Store, config: DomainConfig, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.clock = clock

    # -- the API's side -------------------------------------------------------------------
    def create(self, tenant_id: str, app_ref: str, hostname: str, *, method: str | None, hsts: bool) -> Domain:
        name = normalise_hostname(hostname, base_domain=self.config.base_domain)
        chosen = method or self.config.methods[0]
        if chosen not in self.config.methods:
            raise Invalid(
                f"'method' must be one of {list(self.config.methods)} on this platform; got {chosen!r}.",
                errors=[{"field": "method", "message": f"one of {list(self.config.methods)}"}],
            )
        now = self.clock()
        with self.db.write() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
            if app is None:
                raise NotFound.of("app", app_ref)
            repo = DomainRepository(session, tenant_id)
            self._free(DomainRepository(session, None), name, tenant_id)
            if repo.count(app.id) >= self.config.max_per_app:
                raise QuotaExceeded(
                    f"App '{app.name}' has {self.config.max_per_app} domains, the most it may have; remove one first."
                )
            created = repo.add(
                id=new_id("dom"),
                tenant_id=tenant_id,
                app_id=app.id,
                hostname=name,
                method=chosen,
                token=secrets.token_urlsafe(24),
                status=PENDING,
                hsts=hsts,
                verify_until=now + self.config.verify_for,
            )
        log.info("domain_added", domain_id=created.id, hostname=name, method=chosen)
        return created

    @staticmethod
    def _free(everyone: DomainRepository, name: str, tenant_id: str) -> None:
        holder = everyone.claim_of(name)
        if holder is None:
            return
        if holder.tenant_id == tenant_id:
            raise Conflict(f"'{name}' is already a domain of this tenant ({holder.id}, {holder.status}).", code="hostname-taken")
        raise Conflict(
            f"'{name}' is claimed by another tenant. If you control it, wait until that claim fails its "
            "verification (unproven claims let go of the name) and add it again.",
            code="hostname-taken",
        )

    def list(self, tenant_id: str, app_ref: str, *, limit: int, cursor: str | None) -> Page[Domain]:
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
            if app is None:
                raise NotFound.of("app", app_ref)
            return DomainRepository(session, tenant_id).list(app.id, limit=limit, cursor=cursor)

    def get(self, tenant_id: str, app_ref: str, ref: str) -> Domain:
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
            found = None if app is None else DomainRepository(session, tenant_id).get(ref.lower(), app.id)
        if found is None:
            raise NotFound.of("domain", ref)
        return found

    def verify(self, tenant_id: str, app_ref: str, ref: str) -> Domain:
        """Look for the proof again (a failed domain, or one whose record was just made)."""
        found = self.get(tenant_id, app_ref, ref)
        if found.status == ACTIVE:
            return found
        with self.db.write() as session:
            everyone = DomainRepository(session, None)
            row = everyone.row(found.id)
            if row is None:
                raise NotFound.of("domain", ref)
            if row.status == FAILED:
                self._free(everyone, row.hostname, tenant_id)
            row.status, row.reason = PENDING, None
            row.verify_until, row.checked_at = self.clock() + self.config.verify_for, None
            session.flush()
            return everyone.get(row.id)  # type: ignore[return-value]

    def delete(self, tenant_id: str, app_ref: str, ref: str) -> Domain:
        """The route goes at once (the caller removes its file after the commit); the
        certificate stays in Traefik's store until it expires."""
        found = self.get(tenant_id, app_ref, ref)
        with self.db.write() as session:
            DomainRepository(session, tenant_id).delete(found.id)
        log.info("domain_removed", domain_id=found.id, hostname=found.hostname)
        return found

    def answer(self, hostname: str, token: str) -> str | None:
        """What the token URL answers on ``hostname``: the proof of a domain waiting for it."""
        with self.db.read() as session:
            waiting = DomainRepository(session, None).pending_token(hostname.lower().rstrip("."), token)
        return None if waiting is None else proof(waiting.token)

    # -- the verifier's side ----------------------------------------------------------------
    def active(self) -> builtins.list[Domain]:
        with self.db.read() as session:
            return DomainRepository(session, None).in_status(ACTIVE)

    def awaiting_http(self) -> bool:
        with self.db.read() as session:
            return any(d.method == HTTP for d in DomainRepository(session, None).in_status(PENDING, VERIFYING))

    def due(self) -> builtins.list[Domain]:
        now = self.clock()
        with self.db.read() as session:
            waiting = DomainRepository(session, None).in_status(PENDING, VERIFYING)
        return [d for d in waiting if d.checked_at is None or d.checked_at + self.config.verify_interval <= now]

    def record(self, domain: Domain, failure: str | None) -> Check | None:
        """Store one check's outcome: active on success; failed once ``verify_until`` passed."""
        now = self.clock()
        with self.db.write() as session:
            row = DomainRepository(session, None).row(domain.id)
            if row is None or row.status not in (PENDING, VERIFYING) or row.token != domain.token:
                return None  # removed or restarted meanwhile
            row.checked_at = now
            if failure is None:
                row.status, row.reason, row.verified_at = ACTIVE, None, now
            elif row.verify_until is not None and now >= row.verify_until:
                row.status, row.reason = FAILED, self.failure_reason(domain, failure)
            else:
                row.status, row.reason = VERIFYING, f"not yet: {failure}"
            return Check(row.id, row.hostname, row.status, row.reason)

    def instructions(self, domain: Domain) -> str:
        if domain.method == DNS:
            return f"create a TXT record {TXT_NAME}.{domain.hostname} with the value {proof(domain.token)}"
        return (
            f"point {domain.hostname} (an A/AAAA or CNAME record) at this platform, so that "
            f"http://{domain.hostname}{VERIFY_PATH}{domain.token} reaches it"
        )

    def failure_reason(self, domain: Domain, failure: str) -> str:
        return f"{failure}. To prove you control the name, {self.instructions(domain)}, then POST .../verify."

    def check_all(self, checks: ProofChecks, due: Sequence[Domain]) -> Sequence[Check]:
        """One check of each of ``due`` (``due()``, read once per scheduler tick)."""
        done = []
        for domain in due:
            failure = _check(checks, domain)
            outcome = self.record(domain, failure)
            if outcome is not None:
                done.append(outcome)
                log.info("domain_checked", domain_id=domain.id, hostname=domain.hostname, status=outcome.status)
        return done


def _check(checks: ProofChecks, domain: Domain) -> str | None:
    try:
        if domain.method == DNS:
            checks.check_txt(domain.hostname, proof(domain.token))
        else:
            checks.check_http(domain.hostname, domain.token, proof(domain.token))
    except CheckFailed as exc:
        return str(exc)
    return None
