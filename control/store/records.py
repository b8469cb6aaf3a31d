"""Plain, immutable views of stored rows: what repositories hand to the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    display_name: str
    status: str
    created_at: datetime
    updated_at: datetime

    @property
    def is_suspended(self) -> bool:
        return self.status == "suspended"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str | None
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class App:
    id: str
    tenant_id: str
    name: str
    description: str
    port: int
    health_check_path: str
    builder: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
