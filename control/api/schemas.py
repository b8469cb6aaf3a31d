"""Wire shapes shared by several resources."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from control.domain.records import ApiKey
from control.security.scopes import DEPLOY_READS_SECRETS


class KeyOut(msgspec.Struct):
    id: str
    tenant_id: str | None
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            scopes=list(key.scopes),
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
        )


class KeyCreated(KeyOut):
    token: str = msgspec.field(name="token")  # the only time the secret is ever returned


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    scopes: Annotated[
        list[str],
        msgspec.Meta(
            description="Some of read | deploy | admin | inference, at most those of the key making it. " + DEPLOY_READS_SECRETS
        ),
    ]
    name: Annotated[str, msgspec.Meta(description="A label for people: at most 100 characters, no control characters")] = ""
    expires_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description="When the key stops working. Not later than the expiry of the key making it; "
            "left out, the new key expires with its maker (never, if the maker never expires)."
        ),
    ] = None


class KeyList(msgspec.Struct):
    items: list[KeyOut]
    next_cursor: str | None
