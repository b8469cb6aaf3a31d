"""Scopes a tenant key can hold, and what each one lets it do.

``admin`` ⊇ ``deploy`` ⊇ ``read``; ``inference`` stands alone so a key handed to a
model-calling agent cannot touch apps. Operator keys (no tenant) hold ``operator``.

``deploy`` runs code of the caller's choosing with the app's environment, so it can read
every secret value of the tenant's apps (and linked database URLs) by deploying code that
prints them: the API's ``admin``-only reveal does not protect secrets from a ``deploy`` key.
``DESCRIPTIONS`` says so, and the OpenAPI document and the skills repeat it.
"""

from __future__ import annotations

from enum import StrEnum


class KeyScope(StrEnum):
    READ = "read"
    DEPLOY = "deploy"
    ADMIN = "admin"
    INFERENCE = "inference"
    OPERATOR = "operator"


# Not grantable scopes: what a route may demand of its caller beyond a tenant scope.
OPERATOR_ACCESS = "operator"  # an operator key
ANY_KEY_ACCESS = "any-key"  # any valid key, operator or tenant
# A tenant key holding either scope (``|`` separates alternatives): usage reports, which an
# inference-only key reads for its tokens and a ``read`` key for everything the tenant used.
USAGE_ACCESS = "read|inference"


def alternatives(access: str) -> tuple[str, ...]:
    return tuple(access.split("|"))


TENANT_SCOPES = frozenset({KeyScope.READ, KeyScope.DEPLOY, KeyScope.ADMIN, KeyScope.INFERENCE})

DEPLOY_READS_SECRETS = (
    "A `deploy` key can read every secret: it deploys code, and that code runs with the app's environment "
    "(env var values and linked database URLs), so it can print or send them anywhere. Hiding values from "
    "`GET .../env` without `admin` does not stop that. Give `deploy` only to callers you would trust with the "
    "secrets themselves."
)

DESCRIPTIONS: dict[str, str] = {
    KeyScope.READ: "See the tenant's apps, deployments, logs, env var names (not values), databases, backups and "
    "usage (`/v1/usage`: compute, storage, builds, inference).",
    KeyScope.DEPLOY: "Everything `read` can, plus create, change and deploy apps, set env vars, manage databases, "
    "links and backups. " + DEPLOY_READS_SECRETS,
    KeyScope.ADMIN: "Everything `deploy` can, plus reveal env var values and database URLs, download backups, "
    "read the audit log and issue or revoke the tenant's keys.",
    KeyScope.INFERENCE: "Call the inference gateway (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, "
    "`/v1/usage` for inference tokens) and nothing else.",
    KeyScope.OPERATOR: "Operator keys only (no tenant): manage tenants, their keys and limits, and inference nodes.",
}

KEY_LIMITS = (
    "A key never makes a key that can do more or last longer than itself: the new key's scopes must be "
    "among the maker's (403 `scope-exceeds-issuer`), and when the maker expires the new key's `expires_at` "
    "must not be later (403 `expiry-exceeds-issuer`); left out, it inherits the maker's expiry."
)


def describe() -> str:
    """The scopes as Markdown, for the OpenAPI document."""
    lines = [
        f"- `{scope}`: {DESCRIPTIONS[scope]}"
        for scope in (KeyScope.READ, KeyScope.DEPLOY, KeyScope.ADMIN, KeyScope.INFERENCE, KeyScope.OPERATOR)
    ]
    return "Scopes (`admin` includes `deploy`, which includes `read`):\n" + "\n".join(lines) + "\n\n" + KEY_LIMITS


_IMPLIES: dict[str, frozenset[str]] = {
    KeyScope.ADMIN: frozenset({KeyScope.ADMIN, KeyScope.DEPLOY, KeyScope.READ}),
    KeyScope.DEPLOY: frozenset({KeyScope.DEPLOY, KeyScope.READ}),
    KeyScope.READ: frozenset({KeyScope.READ}),
    KeyScope.INFERENCE: frozenset({KeyScope.INFERENCE}),
    KeyScope.OPERATOR: frozenset({KeyScope.OPERATOR}),
}


def effective(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    granted: set[str] = set()
    for scope in scopes:
        granted |= _IMPLIES.get(scope, frozenset())
    return frozenset(granted)
