"""Request and response bodies of self-registration, registration tokens and key recovery."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from control.api.databases import DatabaseLimitsIn
from control.api.inference_limits import InferenceLimitsIn
from control.api.schemas import KeyCreated, KeyOut
from control.api.tenants import LimitsIn, TenantOut
from control.api.volumes import StorageLimitsIn
from control.domain.keys import IssuedKey
from control.domain.records import DatabaseOverrides, InferenceOverrides, LimitOverrides, StorageOverrides
from control.domain.registration import MAX_USES
from control.domain.registration_records import DefaultLimits, RegistrationToken

TENANT_NAME = msgspec.Meta(
    pattern="^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    max_length=63,
    description="The tenant's name, a DNS label: it becomes part of its apps' hostnames",
)
SHOWN_ONCE = "Shown once: store the key and the recovery code now; only their hashes are kept."


class DefaultLimitsIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Overrides each tenant made with the token starts with, as the matching operator PUTs
    take them; a part left out keeps the platform defaults."""

    rate: Annotated[LimitsIn | None, msgspec.Meta(description="As PUT /v1/tenants/{id}/limits")] = None
    databases: Annotated[DatabaseLimitsIn | None, msgspec.Meta(description="As PUT .../database-limits")] = None
    storage: Annotated[StorageLimitsIn | None, msgspec.Meta(description="As PUT .../storage-limits")] = None
    inference: Annotated[InferenceLimitsIn | None, msgspec.Meta(description="As PUT .../inference-limits")] = None

    def domain(self) -> DefaultLimits:
        r, d, s, i = self.rate, self.databases, self.storage, self.inference
        return DefaultLimits(
            rate=None if r is None else LimitOverrides(r.tenant_quota, r.key_quota),
            databases=None if d is None else DatabaseOverrides(d.max_databases, d.max_memory_mb),
            storage=None if s is None else StorageOverrides(s.max_volumes, s.max_total_mb, s.max_snapshot_mb),
            inference=None
            if i is None
            else InferenceOverrides(i.requests_per_minute, i.tokens_per_minute, i.token_budget, i.budget_period),
        )

    @classmethod
    def of(cls, limits: DefaultLimits) -> DefaultLimitsIn:
        r, d, s, i = limits.rate, limits.databases, limits.storage, limits.inference
        return cls(
            rate=None if r is None else LimitsIn(r.tenant_quota, r.key_quota),
            databases=None if d is None else DatabaseLimitsIn(d.max_databases, d.max_memory_mb),
            storage=None if s is None else StorageLimitsIn(s.max_volumes, s.max_total_mb, s.max_snapshot_mb),
            inference=None
            if i is None
            else InferenceLimitsIn(i.requests_per_minute, i.tokens_per_minute, i.token_budget, i.budget_period),
        )


class RegistrationTokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    uses: Annotated[int, msgspec.Meta(ge=1, le=MAX_USES, description="How many tenants it may register")] = 1
    expires_at: Annotated[
        datetime | None, msgspec.Meta(description="When it stops working (RFC 3339); left out or null: 7 days from now")
    ] = None
    approval: Annotated[
        bool, msgspec.Meta(description="Tenants registered with it start `pending`: their keys answer 403 until approved")
    ] = False
    default_limits: DefaultLimitsIn | None = None
    name: Annotated[str, msgspec.Meta(description="A label for people: at most 100 characters")] = ""


class RegistrationTokenOut(msgspec.Struct):
    id: str
    name: str
    status: Annotated[str, msgspec.Meta(description="active | revoked | expired | used-up")]
    uses: int
    used: int
    remaining: int
    approval: bool
    default_limits: DefaultLimitsIn
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: RegistrationToken, now: datetime) -> RegistrationTokenOut:
        return cls(
            id=token.id,
            name=token.name,
            status=token.status(now),
            uses=token.uses,
            used=token.used,
            remaining=max(0, token.uses - token.used),
            approval=token.approval,
            default_limits=DefaultLimitsIn.of(token.default_limits),
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )


class RegistrationTokenCreated(RegistrationTokenOut):
    token: Annotated[str, msgspec.Meta(description="`mrg_reg_...`: the only time it is shown; hand it to the registrant")]


class RegistrationTokenList(msgspec.Struct):
    items: list[RegistrationTokenOut]
    next_cursor: str | None


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    tenant_name: Annotated[str, TENANT_NAME]
    token: Annotated[str, msgspec.Meta(max_length=200, description="The registration token (`mrg_reg_...`)")]
    display_name: Annotated[str, msgspec.Meta(max_length=200, description="For people; default: the name")] = ""


class RecoverIn(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Annotated[str, TENANT_NAME]
    recovery_code: Annotated[str, msgspec.Meta(max_length=200, description="The tenant's recovery code (`mrg_rec_...`)")]
    revoke_keys: Annotated[
        bool, msgspec.Meta(description="Also revoke every other key of the tenant (a leak); left out, they keep working")
    ] = False


def key_created(issued: IssuedKey) -> KeyCreated:
    return KeyCreated(**msgspec.structs.asdict(KeyOut.of(issued.key)), token=issued.token)


class Registration(msgspec.Struct):
    tenant: TenantOut
    key: Annotated[KeyCreated, msgspec.Meta(description="The tenant's first `admin` key")]
    recovery_code: Annotated[str, msgspec.Meta(description="Buys a new admin key once (POST /v1/recover)")]
    note: str = SHOWN_ONCE


class Recovery(msgspec.Struct):
    tenant: TenantOut
    key: Annotated[KeyCreated, msgspec.Meta(description="A new `admin` key")]
    recovery_code: Annotated[str, msgspec.Meta(description="The new recovery code; the one just used no longer works")]
    revoked_keys: Annotated[int, msgspec.Meta(description="Other keys revoked (`revoke_keys`)")]
    note: str = SHOWN_ONCE


class RecoveryCodeOut(msgspec.Struct):
    tenant_id: str
    recovery_code: Annotated[str, msgspec.Meta(description="The tenant's new recovery code; the old one no longer works")]
    note: str = "Shown once: hand it to the tenant's owner; only its hash is kept."
