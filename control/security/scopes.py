"""Scopes a tenant key can hold, and what each one lets it do.

``admin`` ⊇ ``deploy`` ⊇ ``read``; ``inference`` stands alone so a key handed to a
model-calling agent cannot touch apps. Operator keys (no tenant) hold ``operator``.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    READ = "read"
    DEPLOY = "deploy"
    ADMIN = "admin"
    INFERENCE = "inference"
    OPERATOR = "operator"


# Not grantable scopes: what a route may demand of its caller beyond a tenant scope.
OPERATOR_ACCESS = "operator"  # an operator key
ANY_KEY_ACCESS = "any-key"  # any valid key, operator or tenant

TENANT_SCOPES = frozenset({Scope.READ, Scope.DEPLOY, Scope.ADMIN, Scope.INFERENCE})

_IMPLIES: dict[str, frozenset[str]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.DEPLOY, Scope.READ}),
    Scope.DEPLOY: frozenset({Scope.DEPLOY, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.INFERENCE: frozenset({Scope.INFERENCE}),
    Scope.OPERATOR: frozenset({Scope.OPERATOR}),
}


def effective(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    granted: set[str] = set()
    for scope in scopes:
        granted |= _IMPLIES.get(scope, frozenset())
    return frozenset(granted)
