"""Self-registration and key recovery, which take no API key, and what operators do for them:
registration tokens, approving or rejecting registered tenants, resetting recovery codes.

``POST /v1/register`` and ``POST /v1/recover`` carry their credential (a registration token,
a recovery code) in the body. Both are limited per client address before anything else
(``opt["client_limit"]``), accept an Idempotency-Key scoped to the route
(``opt["anonymous_idempotency"]``), and are audited like every mutating call; the event
is filed under the tenant concerned when there is one (``attribute_to_tenant``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.audit import attribute_to_tenant
from control.api.endpoints import Cursor, IdempotentOperation, Limit, endpoint
from control.api.problems import problem_responses
from control.api.registration_schemas import (
    DefaultLimitsIn,
    RecoverIn,
    Recovery,
    RecoveryCodeOut,
    RegisterIn,
    Registration,
    RegistrationTokenCreate,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenOut,
    key_created,
)
from control.api.request_context import request_id_of
from control.api.tenants import TenantOut
from control.clock import utcnow
from control.domain.audit import AuditService
from control.domain.errors import DomainError
from control.domain.recovery import RecoveryService
from control.domain.registration import RegistrationService
from control.domain.tenants import TenantService
from control.security.scopes import OPERATOR_ACCESS

DEFAULT_TOKEN_LIFETIME = timedelta(days=7)
LOCK_ACTION = "POST /v1/recover:locked"  # the audit event of the failure that locks a name
OPERATOR_TAGS = ["tenants (operator)"]


def public_post(
    path: str, *, client_limit: str, summary: str, description: str, status_code: int
) -> Callable[[Callable[..., Any]], Any]:
    """A POST anyone may call: no API key (the credential is in the body), limited per client
    address, Idempotency-Key scoped to the route."""
    return post(
        path,
        opt={"public": True, "client_limit": client_limit, "anonymous_idempotency": True},
        responses=problem_responses(400, 401, 409, 422, 429),
        operation_class=IdempotentOperation,
        security=[],
        summary=summary,
        description=description,
        tags=["onboarding (no API key)"],
        status_code=status_code,
        sync_to_thread=True,
    )


class RegistrationTokenController(Controller):
    path = "/v1/registration-tokens"
    tags = ("registration tokens (operator)",)

    @endpoint("POST", access=OPERATOR_ACCESS, summary="Issue a registration token (shown once)", status_code=201)
    def create(
        self,
        request: Request[Any, Any, Any],
        registration: NamedDependency[RegistrationService],
        data: JSONBody[RegistrationTokenCreate],
    ) -> RegistrationTokenCreated:
        """Whoever holds the token may register `uses` tenants with POST /v1/register until `expires_at`;
        only its SHA-256 is kept."""
        now = utcnow()
        issued = registration.create_token(
            request.user.key_id,
            name=data.name,
            uses=data.uses,
            expires_at=data.expires_at or now + DEFAULT_TOKEN_LIFETIME,
            approval=data.approval,
            default_limits=(data.default_limits or DefaultLimitsIn()).domain(),
        )
        out = RegistrationTokenOut.of(issued.token, now)
        return RegistrationTokenCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, token=issued.secret)

    @endpoint("GET", access=OPERATOR_ACCESS, summary="List registration tokens (never their secrets)")
    def list(
        self,
        registration: NamedDependency[RegistrationService],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> RegistrationTokenList:
        page, now = registration.list_tokens(limit=limit, cursor=cursor), utcnow()
        return RegistrationTokenList(items=[RegistrationTokenOut.of(t, now) for t in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{token_id:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Get a registration token")
    def get(self, registration: NamedDependency[RegistrationService], token_id: FromPath[str]) -> RegistrationTokenOut:
        return RegistrationTokenOut.of(registration.get_token(token_id), utcnow())

    @endpoint("DELETE", "/{token_id:str}", access=OPERATOR_ACCESS, errors=(404,), summary="Revoke a registration token")
    def revoke(self, registration: NamedDependency[RegistrationService], token_id: FromPath[str]) -> None:
        """Registrations with it are refused from now on (401 `registration-token-invalid`); tenants it made stay."""
        registration.revoke_token(token_id)


@public_post(
    "/v1/register",
    client_limit="registration",
    status_code=201,
    summary="Register a tenant with a registration token (no API key)",
    description="Makes the tenant (`pending` when the token asks for approval), its first `admin` key and its "
    "recovery code, each shown once. 401 `registration-token-invalid` for a token that is unknown, expired, revoked or "
    "used up (the same answer for each); 409 `name-taken`; 429 `rate-limited` past the per-address budget. "
    "A refused registration spends no use and leaves nothing behind. Send an Idempotency-Key: a retry then gets "
    "the same answer instead of registering twice.",
)
def register(
    request: Request[Any, Any, Any], registration: NamedDependency[RegistrationService], data: JSONBody[RegisterIn]
) -> Registration:
    done = registration.register(data.tenant_name, data.token, display_name=data.display_name)
    attribute_to_tenant(request, done.tenant.id)
    return Registration(tenant=TenantOut.of(done.tenant), key=key_created(done.key), recovery_code=done.recovery_code)


@public_post(
    "/v1/recover",
    client_limit="recovery",
    status_code=200,
    summary="A new admin key for a tenant, with its recovery code (no API key)",
    description="Returns a new `admin` key and a new recovery code; the code sent stops working. Other keys keep "
    "working unless `revoke_keys` is true. 401 `recovery-refused` for a wrong name or code (the same answer for "
    "each); after `MOORAGE_RECOVERY_MAX_FAILURES` wrong codes the name is locked for `MOORAGE_RECOVERY_LOCK_S` "
    "seconds: 429 `recovery-locked` with Retry-After, the right code too. 429 `rate-limited` past the per-address "
    "or per-tenant budget.",
)
def recover(
    request: Request[Any, Any, Any],
    recovery: NamedDependency[RecoveryService],
    audit: NamedDependency[AuditService],
    data: JSONBody[RecoverIn],
) -> Recovery:
    try:
        done = recovery.recover(data.tenant, data.recovery_code, revoke_keys=data.revoke_keys)
    except DomainError as exc:
        tenant_id = exc.extra.get("tenant_id")
        attribute_to_tenant(request, tenant_id)
        if exc.extra.get("locked_now"):  # in this request's unit of work: kept with the refusal
            audit.record(
                tenant_id=tenant_id,
                api_key_id=None,
                action=LOCK_ACTION,
                target=request.url.path,
                request_id=request_id_of(request.scope),
                outcome=401,
            )
        raise
    attribute_to_tenant(request, done.tenant.id)
    return Recovery(
        tenant=TenantOut.of(done.tenant),
        key=key_created(done.key),
        recovery_code=done.recovery_code,
        revoked_keys=done.revoked_keys,
    )


@endpoint(
    "POST", "/v1/tenants/{tenant_id:str}/approve", access=OPERATOR_ACCESS, errors=(404,),
    summary="Approve a pending tenant: its keys start working", tags=OPERATOR_TAGS, status_code=200,
)  # fmt: skip
def approve_tenant(tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> TenantOut:
    """409 `tenant-not-pending` for a tenant that is not awaiting approval."""
    return TenantOut.of(tenants.approve(tenant_id))


@endpoint(
    "POST", "/v1/tenants/{tenant_id:str}/reject", access=OPERATOR_ACCESS, errors=(404,),
    summary="Reject a pending tenant: it is removed with its keys", tags=OPERATOR_TAGS, status_code=200,
)  # fmt: skip
def reject_tenant(tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> TenantOut:
    """The tenant as it was (`status`: `rejected`); its name is free again. 409 `tenant-not-pending`."""
    rejected = TenantOut.of(tenants.reject(tenant_id))
    rejected.status = "rejected"
    return rejected


@endpoint(
    "POST", "/v1/tenants/{tenant_id:str}/recovery-code", access=OPERATOR_ACCESS, errors=(404,),
    summary="Issue a tenant a new recovery code (shown once); lifts a recovery lock", tags=OPERATOR_TAGS, status_code=200,
)  # fmt: skip
def reset_recovery_code(recovery: NamedDependency[RecoveryService], tenant_id: FromPath[str]) -> RecoveryCodeOut:
    tenant, code = recovery.reset(tenant_id)
    return RecoveryCodeOut(tenant_id=tenant.id, recovery_code=code)


REGISTRATION_ROUTES = [RegistrationTokenController, register, recover, approve_tenant, reject_tenant, reset_recovery_code]
