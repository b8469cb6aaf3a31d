"""Self-registration: operators issue registration tokens; whoever holds one registers a
tenant of their own and gets its first ``admin`` key and a recovery code, each shown once.

A token's uses are spent by one conditional UPDATE inside the registration's own
transaction (``RegistrationTokenRepository.consume``): N uses make at most N tenants
however many registrations race, and a registration that fails later (a name taken, the
database busy) spends nothing, leaves no tenant, key or code behind. An unknown, expired,
revoked or used-up token is refused with the same 401 ``registration-token-invalid``:
the answer never tells which, so it says nothing about which tokens exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from control.clock import utcnow
from control.domain.databases import DatabaseService
from control.domain.databases import check_overrides as check_database_limits
from control.domain.errors import Conflict, Invalid, NotFound, Unauthenticated
from control.domain.inference_limits import InferenceLimitsService
from control.domain.inference_limits import check_overrides as check_inference_limits
from control.domain.keys import IssuedKey
from control.domain.limits import LimitsService
from control.domain.limits import check_overrides as check_rate_limits
from control.domain.names import DISPLAY_NAME, KEY_NAME, check_tenant_name
from control.domain.records import Page, Tenant
from control.domain.registration_records import DefaultLimits, RegistrationToken
from control.domain.volumes import VolumeService
from control.domain.volumes import check_overrides as check_storage_limits
from control.ids import new_id
from control.security.scopes import KeyScope
from control.security.tokens import REGISTRATION_TOKEN, hash_token, issue_recovery_code, issue_token, token_matches
from control.store.database import Store
from control.store.repositories.api_keys import ApiKeyRepository
from control.store.repositories.registration import RecoveryRepository, RegistrationTokenRepository
from control.store.repositories.tenants import TenantRepository

MAX_USES = 10_000
INVALID_TOKEN = "registration-token-invalid"
_REFUSED = (
    "This registration token is not valid: it is unknown, expired, revoked or used up (the answer is the same for "
    "each). Ask the operator who gave it to you for a new one."
)
# Compared against when the token names no stored token, so an unknown one costs a hash comparison too.
_NO_TOKEN_HASH = hash_token("mrg_reg_unknown")


@dataclass(frozen=True, slots=True)
class IssuedRegistrationToken:
    token: RegistrationToken
    secret: str  # shown once, never stored


@dataclass(frozen=True, slots=True)
class Registered:
    tenant: Tenant
    key: IssuedKey
    recovery_code: str  # shown once, never stored
    token_id: str


def add_admin_key(keys: ApiKeyRepository, tenant_id: str, *, name: str, created_by: str) -> IssuedKey:
    """A tenant's own ``admin`` key, made without an issuing key (registration, recovery)."""
    issued = issue_token()
    key = keys.add(
        id=issued.id,
        tenant_id=tenant_id,
        name=name,
        secret_hash=issued.secret_hash,
        scopes=[str(KeyScope.ADMIN)],
        created_by=created_by,
        expires_at=None,
    )
    return IssuedKey(key=key, token=issued.token)


class RegistrationService:
    def __init__(
        self,
        db: Store,
        *,
        limits: LimitsService,
        databases: DatabaseService,
        volumes: VolumeService,
        inference_limits: InferenceLimitsService,
    ) -> None:
        self.db = db
        self.limits, self.databases, self.volumes, self.inference_limits = limits, databases, volumes, inference_limits

    # -- operators ------------------------------------------------------------------------
    def create_token(
        self,
        issuer_key_id: str,
        *,
        name: str,
        uses: int,
        expires_at: datetime | None,
        approval: bool,
        default_limits: DefaultLimits,
    ) -> IssuedRegistrationToken:
        KEY_NAME.check("name", name)
        if not 1 <= uses <= MAX_USES:
            raise Invalid(f"'uses' must be 1 to {MAX_USES}.", errors=[{"field": "uses", "message": f"1..{MAX_USES}"}])
        if expires_at is not None and expires_at <= utcnow():
            raise Invalid("'expires_at' must be in the future.", errors=[{"field": "expires_at", "message": "in the future"}])
        _check_limits(default_limits)
        issued = REGISTRATION_TOKEN.issue()
        with self.db.write() as session:
            token = RegistrationTokenRepository(session).add(
                id=issued.id,
                name=name,
                secret_hash=issued.secret_hash,
                uses=uses,
                approval=approval,
                default_limits=default_limits,
                created_by=issuer_key_id,
                expires_at=expires_at,
            )
        return IssuedRegistrationToken(token, issued.token)

    def list_tokens(self, *, limit: int, cursor: str | None) -> Page[RegistrationToken]:
        with self.db.read() as session:
            return RegistrationTokenRepository(session).list(limit=limit, cursor=cursor)

    def get_token(self, token_id: str) -> RegistrationToken:
        with self.db.read() as session:
            token = RegistrationTokenRepository(session).get(token_id)
        if token is None:
            raise NotFound.of("registration token", token_id)
        return token

    def revoke_token(self, token_id: str) -> RegistrationToken:
        """Registrations with it are refused from now on; tenants it made stay."""
        with self.db.write() as session:
            token = RegistrationTokenRepository(session).revoke(token_id, utcnow())
        if token is None:
            raise NotFound.of("registration token", token_id)
        return token

    # -- anyone with a token ----------------------------------------------------------------
    def register(self, tenant_name: str, token: str, *, display_name: str = "") -> Registered:
        check_tenant_name("tenant_name", tenant_name)
        DISPLAY_NAME.check("display_name", display_name)
        token_id = REGISTRATION_TOKEN.parse_id(token)
        if token_id is None:  # not even shaped like one: nothing to look up
            raise Unauthenticated(_REFUSED, code=INVALID_TOKEN)
        now = utcnow()
        with self.db.write() as session:  # one transaction: a refusal below undoes all of it
            tokens = RegistrationTokenRepository(session)
            found = tokens.get(token_id)
            matches = token_matches(token, found.secret_hash if found is not None else _NO_TOKEN_HASH)
            if found is None or not matches or found.status(now) != "active":
                raise Unauthenticated(_REFUSED, code=INVALID_TOKEN)
            tenants = TenantRepository(session)
            if tenants.name_taken(tenant_name):  # only a valid token's holder learns that a name is taken
                raise Conflict(f"A tenant named '{tenant_name}' already exists; pick another name.", code="name-taken")
            if not tokens.consume(token_id, now):  # the last use went to a registration that raced this one
                raise Unauthenticated(_REFUSED, code=INVALID_TOKEN)
            tenant = tenants.add(
                id=new_id("ten"),
                name=tenant_name,
                display_name=display_name or tenant_name,
                status="pending" if found.approval else "active",
            )
            key = add_admin_key(ApiKeyRepository(session), tenant.id, name="registration", created_by=token_id)
            code, code_hash = issue_recovery_code()
            RecoveryRepository(session).set_code(tenant.id, code_hash, now)
            self._apply(tenant.id, found.default_limits)
        return Registered(tenant=tenant, key=key, recovery_code=code, token_id=token_id)

    def _apply(self, tenant_id: str, limits: DefaultLimits) -> None:
        """The token's overrides, through each quota's own service (its rules, its cache)."""
        if limits.rate is not None:
            self.limits.set(tenant_id, limits.rate)
        if limits.databases is not None:
            self.databases.set_limits(tenant_id, limits.databases)
        if limits.storage is not None:
            self.volumes.set_limits(tenant_id, limits.storage)
        if limits.inference is not None:
            self.inference_limits.set(tenant_id, limits.inference)


def _check_limits(limits: DefaultLimits) -> None:
    """The rules each quota's PUT applies, checked when the token is made, so a registration
    never fails on a limit its token carries."""
    if limits.rate is not None:
        check_rate_limits(limits.rate)
    if limits.databases is not None:
        check_database_limits(limits.databases)
    if limits.storage is not None:
        check_storage_limits(limits.storage)
    if limits.inference is not None:
        check_inference_limits(limits.inference)
