"""Records of self-registration and recovery: plain values the store hands the domain."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from control.domain.records import DatabaseOverrides, InferenceOverrides, LimitOverrides, StorageOverrides


@dataclass(frozen=True, slots=True)
class DefaultLimits:
    """The per-tenant overrides a registration token gives each tenant it makes; a part left
    None (or a field left None inside it) keeps the platform default."""

    rate: LimitOverrides | None = None
    databases: DatabaseOverrides | None = None
    storage: StorageOverrides | None = None
    inference: InferenceOverrides | None = None

    def to_json(self) -> dict[str, Any]:
        parts = {"rate": self.rate, "databases": self.databases, "storage": self.storage, "inference": self.inference}
        return {name: asdict(part) for name, part in parts.items() if part is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DefaultLimits:
        return cls(
            rate=LimitOverrides(**data["rate"]) if "rate" in data else None,
            databases=DatabaseOverrides(**data["databases"]) if "databases" in data else None,
            storage=StorageOverrides(**data["storage"]) if "storage" in data else None,
            inference=InferenceOverrides(**data["inference"]) if "inference" in data else None,
        )


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    id: str
    name: str
    secret_hash: str
    uses: int
    used: int
    approval: bool
    default_limits: DefaultLimits
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = field(default=None)

    def status(self, now: datetime) -> str:
        """active | revoked | expired | used-up (in that order of precedence)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.used >= self.uses:
            return "used-up"
        return "active"


@dataclass(frozen=True, slots=True)
class RecoveryAttempts:
    tenant_name: str
    failures: int
    first_failed_at: datetime
    locked_until: datetime | None
