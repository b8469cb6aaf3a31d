"""API keys: issue (secret shown once), list, revoke, authenticate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from control.clock import utcnow
from control.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TenantPending,
    TenantSuspended,
    Unauthenticated,
)
from control.domain.names import KEY_NAME
from control.domain.recent_keys import recent_keys
from control.domain.records import ApiKey, Page
from control.security.principal import Principal
from control.security.scopes import TENANT_SCOPES, KeyScope, effective
from control.security.tokens import issue_token, parse_key_id, token_matches
from control.store.database import Store
from control.store.repositories.api_keys import ApiKeyRepository
from control.store.repositories.tenants import TenantRepository


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str


_BAD_TOKEN = "The API key is missing or not valid. Send 'Authorization: Bearer mrg_live_...'."


class KeyService:
    def __init__(self, db: Store, *, last_used_resolution: timedelta = timedelta(seconds=60)) -> None:
        self.db = db
        self.last_used_resolution = last_used_resolution
        self.recent = recent_keys(db)

    def bootstrap_operator(self, name: str = "bootstrap", *, another: bool = False) -> IssuedKey:
        with self.db.write() as session:
            keys = ApiKeyRepository(session)
            if keys.any_operator_key() and not another:
                raise Conflict(
                    "An operator key already exists. Use it, or pass --another to mint one more.",
                    code="already-bootstrapped",
                )
            return self._add(keys, None, name, [KeyScope.OPERATOR], None, None)

    def has_operator_key(self) -> bool:
        with self.db.read() as session:
            return ApiKeyRepository(session).any_operator_key()

    def issue(
        self,
        issuer: Principal,
        tenant_id: str,
        *,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
    ) -> IssuedKey:
        unknown = sorted(set(scopes) - TENANT_SCOPES)
        if not scopes or unknown:
            raise Invalid(
                f"'scopes' must be a non-empty subset of {sorted(TENANT_SCOPES)}; unknown: {unknown}.",
                errors=[{"field": "scopes", "message": f"allowed: {sorted(TENANT_SCOPES)}"}],
            )
        KEY_NAME.check("name", name)
        if expires_at is not None and expires_at <= utcnow():
            raise Invalid(
                "'expires_at' must be in the future.",
                errors=[{"field": "expires_at", "message": "must be in the future"}],
            )
        with self.db.write() as session:
            if TenantRepository(session).get(tenant_id) is None:
                raise NotFound.of("tenant", tenant_id)
            keys = ApiKeyRepository(session)
            expires_at = _bounded_by_maker(keys.get(issuer.key_id), scopes, expires_at)
            return self._add(keys, tenant_id, name, scopes, issuer.key_id, expires_at)

    def _add(
        self,
        keys: ApiKeyRepository,
        tenant_id: str | None,
        name: str,
        scopes: list[str],
        created_by: str | None,
        expires_at: datetime | None,
    ) -> IssuedKey:
        issued = issue_token()
        key = keys.add(
            id=issued.id,
            tenant_id=tenant_id,
            name=name,
            secret_hash=issued.secret_hash,
            scopes=[str(s) for s in scopes],
            created_by=created_by,
            expires_at=expires_at,
        )
        return IssuedKey(key=key, token=issued.token)

    def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[ApiKey]:
        with self.db.read() as session:
            return ApiKeyRepository(session).list(tenant_id=tenant_id, limit=limit, cursor=cursor)

    def get(self, tenant_id: str, key_id: str) -> ApiKey:
        with self.db.read() as session:
            key = ApiKeyRepository(session).get(key_id)
        if key is None or key.tenant_id != tenant_id:
            raise NotFound.of("key", key_id)
        return key

    def revoke(self, tenant_id: str, key_id: str) -> ApiKey:
        with self.db.write() as session:
            keys = ApiKeyRepository(session)
            key = keys.get(key_id)
            if key is None or key.tenant_id != tenant_id:
                raise NotFound.of("key", key_id)
            revoked = keys.revoke(key_id, utcnow())
            assert revoked is not None
        self.recent.forget_key(key_id)  # after the commit: see control.domain.recent_keys
        return revoked

    def recently_authenticated(self, token: str) -> Principal | None:
        """``authenticate(token)`` without the database when this process authenticated the
        same token a moment ago (control.domain.recent_keys); None: call ``authenticate``."""
        return self.recent.principal(token, utcnow(), self.last_used_resolution)

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind ``token``, or a clear reason why not (never which part was wrong)."""
        key_id = parse_key_id(token or "")
        if token is None or key_id is None:
            raise Unauthenticated(_BAD_TOKEN)
        started = self.recent.read_at()
        with self.db.read() as session:
            key = ApiKeyRepository(session).get(key_id)
            tenant = None if key is None or key.tenant_id is None else TenantRepository(session).get(key.tenant_id)
        if key is None or not token_matches(token, key.secret_hash):
            raise Unauthenticated(_BAD_TOKEN)
        now = utcnow()
        if key.revoked_at is not None:
            raise Unauthenticated(f"API key {key.id} was revoked. Ask an admin for a new key.", code="key-revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthenticated(f"API key {key.id} has expired. Ask an admin for a new key.", code="key-expired")
        if tenant is not None and tenant.is_suspended:
            raise TenantSuspended(
                f"Tenant '{tenant.name}' is suspended; every call with its keys is refused. Contact the operator."
            )
        if tenant is not None and tenant.is_pending:
            raise TenantPending(
                f"Tenant '{tenant.name}' registered and awaits an operator's approval; its keys work once it is "
                "approved. Retry later, or ask the operator to approve it."
            )
        used_at = key.last_used_at
        if used_at is None or now - used_at >= self.last_used_resolution:
            # With the request's other writes, when it commits: authenticating never takes the write lock.
            self.db.defer_write(lambda session: ApiKeyRepository(session).touch(key.id, now))
            used_at = now
        principal = Principal.of(key.id, key.tenant_id, key.scopes)
        self.recent.remember(started, principal, key.secret_hash, key.expires_at, used_at)
        return principal


def _bounded_by_maker(maker: ApiKey | None, scopes: list[str], expires_at: datetime | None) -> datetime | None:
    """A key never makes a key that can do more, or last longer, than itself: otherwise a
    short-lived or narrow key could mint its own permanent successor. Returns the new key's
    expiry: the requested one, or the maker's own when none is asked for."""
    if maker is None or maker.revoked_at is not None:  # revoked since it authenticated
        raise Unauthenticated("The API key making this request was revoked. Ask an admin for a new key.", code="key-revoked")
    if maker.tenant_id is not None:  # operator keys stand above every tenant scope
        beyond = sorted(set(scopes) - effective(maker.scopes))
        if beyond:
            raise Forbidden(
                f"This key cannot grant {beyond}: a new key gets at most the scopes of the key that makes it "
                f"({sorted(effective(maker.scopes))}). Ask for fewer scopes, or use a key that holds them.",
                code="scope-exceeds-issuer",
            )
    if maker.expires_at is None:
        return expires_at
    if expires_at is None:
        return maker.expires_at
    if expires_at > maker.expires_at:
        raise Forbidden(
            f"'expires_at' must not be later than the expiry of the key that makes it ({maker.expires_at.isoformat()}). "
            "Ask for an earlier expiry, or leave it out to inherit that one.",
            code="expiry-exceeds-issuer",
        )
    return expires_at


def require_tenant(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise Forbidden(
            "Operator keys manage the platform, not a tenant's resources. Use a key issued to the tenant.",
            code="tenant-key-required",
        )
    return principal.tenant_id
