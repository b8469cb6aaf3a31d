"""Custom domains of an app (``/v1/apps/{app}/domains``).

``POST`` claims a hostname for the app (201, ``pending``) and answers what proves control
of it (``verification``): a TXT record, or the token URL that must reach this platform. The
control plane looks for the proof until ``verify_until``; the domain turns ``active``
(routed, with a certificate from the ACME resolver where one is set up) or ``failed`` with
a reason naming the record to create. ``POST .../verify`` looks again. ``DELETE`` removes
the route at once. ``certificate`` is read from Traefik's ACME store, not guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint
from control.api.problems import problem_responses
from control.clock import utcnow
from control.domain.domains import DNS, TXT_NAME, VERIFY_PATH, DomainService, proof
from control.domain.records import Domain
from control.jobs.domains import EXPIRING, CustomDomains
from control.security.scopes import KeyScope
from runtime.certificates import AcmeError, StoredCertificate


class DomainCreate(msgspec.Struct, forbid_unknown_fields=True):
    hostname: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=253,
            description="A DNS name the tenant controls (IDNA names are accepted and stored as punycode); not the "
            "platform's base domain or under it, not an IP address, not a wildcard",
            examples=["shop.example.com"],
        ),
    ]
    method: Annotated[
        Literal["http", "dns"] | None,
        msgspec.Meta(description="How control is proven; default the platform's first (MOORAGE_DOMAIN_VERIFY_METHODS)"),
    ] = None
    hsts: Annotated[bool, msgspec.Meta(description="Send Strict-Transport-Security on HTTPS answers")] = False


class Verification(msgspec.Struct):
    method: Literal["http", "dns"]
    instructions: str
    record_name: Annotated[str | None, msgspec.Meta(description="dns: the TXT record to create")]
    record_value: Annotated[str | None, msgspec.Meta(description="dns: its value")]
    url: Annotated[str | None, msgspec.Meta(description="http: the URL that must reach this platform")]
    expected_body: Annotated[str, msgspec.Meta(description="what the URL answers, or the TXT record holds")]


class CertificateOut(msgspec.Struct):
    state: Annotated[
        Literal["none", "pending", "issued", "expiring", "expired"],
        msgspec.Meta(
            description="none: no ACME resolver is set up (HTTP only); pending: not in the store yet; expiring: under 14 days left"
        ),
    ]
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    serial: str | None
    last_error: Annotated[
        str | None,
        msgspec.Meta(description="Traefik's last failure obtaining or renewing it (newer than the certificate held)"),
    ] = None
    last_error_at: datetime | None = None


class DomainOut(msgspec.Struct):
    id: str
    app_id: str
    hostname: str
    status: Annotated[Literal["pending", "verifying", "active", "failed"], msgspec.Meta(description="see the summary")]
    reason: Annotated[str | None, msgspec.Meta(description="verifying: what the last check found; failed: why, and what to do")]
    verification: Verification
    hsts: bool
    https: Annotated[bool, msgspec.Meta(description="served over HTTPS (HTTP redirects there) once active")]
    certificate: CertificateOut
    verify_until: datetime | None
    checked_at: datetime | None
    verified_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, d: Domain, *, tls: bool, stored: StoredCertificate | None, error: AcmeError | None = None) -> DomainOut:
        if d.method == DNS:
            how = Verification(
                "dns", f"Create a TXT record {TXT_NAME}.{d.hostname} with the value {proof(d.token)}",
                f"{TXT_NAME}.{d.hostname}", proof(d.token), None, proof(d.token),
            )  # fmt: skip
        else:
            url = f"http://{d.hostname}{VERIFY_PATH}{d.token}"
            how = Verification(
                "http", f"Point {d.hostname} (A/AAAA or CNAME) at this platform so that {url} reaches it",
                None, None, url, proof(d.token),
            )  # fmt: skip
        return cls(
            d.id, d.app_id, d.hostname, d.status, d.reason, how, d.hsts, tls, _certificate(tls, stored, error),  # type: ignore[arg-type]
            d.verify_until, d.checked_at, d.verified_at, d.created_at,
        )  # fmt: skip


def _certificate(tls: bool, stored: StoredCertificate | None, error: AcmeError | None) -> CertificateOut:
    if not tls:
        return CertificateOut("none", None, None, None, None)
    if error is not None and stored is not None and error.at <= stored.not_before:
        error = None  # an old failure: a certificate came after it
    failure = (error.error, error.at) if error is not None else (None, None)
    if stored is None:
        return CertificateOut("pending", None, None, None, None, *failure)
    now = utcnow()
    state: Literal["issued", "expiring", "expired"] = (
        "expired" if stored.not_after <= now else "expiring" if stored.not_after - now < EXPIRING else "issued"
    )
    return CertificateOut(state, stored.issuer, stored.not_before, stored.not_after, stored.serial, *failure)


class DomainList(msgspec.Struct):
    items: list[DomainOut]
    next_cursor: str | None


class DomainController(Controller):
    path = "/v1/apps/{app:str}/domains"
    tags = ("domains",)

    @staticmethod
    def _outs(custom_domains: CustomDomains, domains: Sequence[Domain]) -> list[DomainOut]:
        """The store and Traefik's log are files: each is read once per answer, not per domain."""
        tls = custom_domains.domains.config.tls
        stored = custom_domains.certificates() if tls else {}
        errors = custom_domains.acme_errors() if tls and any(d.status == "active" for d in domains) else {}
        return [
            DomainOut.of(
                d, tls=tls, stored=stored.get(d.hostname), error=errors.get(d.hostname) if d.status == "active" else None
            )
            for d in domains
        ]

    @classmethod
    def _out(cls, custom_domains: CustomDomains, domain: Domain) -> DomainOut:
        return cls._outs(custom_domains, [domain])[0]

    @endpoint(
        "POST", access=KeyScope.DEPLOY, errors=(404, 409), status_code=201, summary="Add a custom domain (then prove control)"
    )
    def create(
        self,
        caller_tenant: NamedDependency[str],
        domains: NamedDependency[DomainService],
        custom_domains: NamedDependency[CustomDomains],
        app: FromPath[str],
        data: JSONBody[DomainCreate],
    ) -> Response[DomainOut]:
        created = domains.create(caller_tenant, app, data.hostname, method=data.method, hsts=data.hsts)
        return Response(
            self._out(custom_domains, created),
            status_code=201,
            headers={"Location": f"/v1/apps/{app}/domains/{created.id}"},
        )

    @endpoint("GET", access=KeyScope.READ, errors=(404,), summary="List an app's custom domains")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        domains: NamedDependency[DomainService],
        custom_domains: NamedDependency[CustomDomains],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> DomainList:
        page = domains.list(caller_tenant, app, limit=limit, cursor=cursor)
        return DomainList(self._outs(custom_domains, page.items), page.next_cursor)

    @endpoint("GET", "/{domain:str}", access=KeyScope.READ, errors=(404,), summary="Get a custom domain (id or hostname)")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        domains: NamedDependency[DomainService],
        custom_domains: NamedDependency[CustomDomains],
        app: FromPath[str],
        domain: FromPath[str],
    ) -> DomainOut:
        return self._out(custom_domains, domains.get(caller_tenant, app, domain))

    @endpoint(
        "POST", "/{domain:str}/verify", access=KeyScope.DEPLOY, errors=(404, 409), summary="Look for the ownership proof again"
    )
    def verify(
        self,
        caller_tenant: NamedDependency[str],
        domains: NamedDependency[DomainService],
        custom_domains: NamedDependency[CustomDomains],
        app: FromPath[str],
        domain: FromPath[str],
    ) -> DomainOut:
        return self._out(custom_domains, domains.verify(caller_tenant, app, domain))

    @endpoint("DELETE", "/{domain:str}", access=KeyScope.DEPLOY, errors=(404,), status_code=204, summary="Remove a custom domain")
    def remove(
        self,
        caller_tenant: NamedDependency[str],
        domains: NamedDependency[DomainService],
        custom_domains: NamedDependency[CustomDomains],
        app: FromPath[str],
        domain: FromPath[str],
    ) -> None:
        removed = domains.delete(caller_tenant, app, domain)
        # After the commit: a failed request leaves the route as the row says.
        domains.db.after_commit(lambda: custom_domains.routing.forget(removed.id))


@get(
    f"{VERIFY_PATH}{{token:str}}",
    opt={"public": True},
    summary="Ownership token of a custom domain (reached through Traefik on the domain's own name)",
    tags=["domains"],
    media_type="text/plain",
    responses=problem_responses(404),
)
async def verify_token(request: Request[Any, Any, Any], domains: NamedDependency[DomainService], token: FromPath[str]) -> str:
    host = (request.headers.get("x-forwarded-host") or request.headers.get("host") or "").split(",")[0].strip()
    answer = domains.answer(host.rsplit(":", 1)[0] if not host.startswith("[") else host, token)
    if answer is None:
        raise NotFoundException("no domain waits for this token on this hostname")
    return answer
