"""Who is calling: the authenticated key, its tenant and what it may do."""

from __future__ import annotations

from dataclasses import dataclass

from control.security.scopes import KeyScope, effective


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant_id: str | None
    scopes: frozenset[str]

    @classmethod
    def of(cls, key_id: str, tenant_id: str | None, scopes: tuple[str, ...]) -> Principal:
        return cls(key_id=key_id, tenant_id=tenant_id, scopes=effective(scopes))

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None and KeyScope.OPERATOR in self.scopes

    def allows(self, scope: str) -> bool:
        return scope in self.scopes
