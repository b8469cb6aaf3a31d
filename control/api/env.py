"""An app's environment variables (``/v1/apps/{app}/env``).

- ``GET`` lists names, versions and flags, never values (``read``). ``?reveal=true``
  adds the values and needs the ``admin`` scope; reveals are written to the audit log.
- ``PUT`` replaces the whole set (names left out are removed); ``PATCH`` merges
  (``null`` removes a name). Both are one transaction: any invalid entry is a 422
  naming it, and nothing changes. ``PUT``/``DELETE`` on ``/env/{name}`` touch one name.
- Values are strings or ``{"value": ..., "secret": bool}``; ``secret`` (default true)
  tells tools to mask the value in their output; every value is encrypted at rest.
- Values reach the app's containers, so code deployed with a ``deploy`` key can read them:
  only give ``deploy`` to callers trusted with the secrets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control.api.audit import mark_audited
from control.api.endpoints import endpoint
from control.api.problems import Problem, problem_response
from control.domain.env import EnvService, EnvSet, EnvValue, EnvVar, SecretUnreadable
from control.domain.errors import Forbidden
from control.security.principal import Principal
from control.security.scopes import DEPLOY_READS_SECRETS, KeyScope

Reveal = QueryParameter(
    description="Include values. Needs the `admin` scope (403 otherwise); audited. " + DEPLOY_READS_SECRETS,
    required=False,
)


class EnvValueIn(msgspec.Struct, forbid_unknown_fields=True):
    value: str
    secret: bool = True


EnvEntry = str | EnvValueIn


class EnvReplace(msgspec.Struct, forbid_unknown_fields=True):
    """The complete set: names not listed are removed."""

    vars: dict[str, EnvEntry]


class EnvPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Changes only: a name set to null is removed; names not listed stay."""

    vars: dict[str, EnvEntry | None]


class EnvVarOut(msgspec.Struct):
    name: str
    version: int
    secret: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, var: EnvVar) -> EnvVarOut:
        return cls(var.name, var.version, var.secret, var.created_at, var.updated_at)


class EnvVarRevealed(EnvVarOut):
    value: str = ""


class EnvOut(msgspec.Struct):
    app_id: str
    env_version: int
    vars: list[EnvVarOut]

    @classmethod
    def of(cls, env: EnvSet) -> EnvOut:
        return cls(env.app_id, env.env_version, [EnvVarOut.of(v) for v in env.vars])


class EnvRevealed(msgspec.Struct):
    app_id: str
    env_version: int
    vars: list[EnvVarRevealed]

    @classmethod
    def of(cls, env: EnvSet) -> EnvRevealed:
        items = [EnvVarRevealed(**msgspec.structs.asdict(EnvVarOut.of(v)), value=v.value or "") for v in env.vars]
        return cls(env.app_id, env.env_version, items)


def _value(entry: EnvEntry) -> EnvValue:
    return EnvValue(entry) if isinstance(entry, str) else EnvValue(entry.value, entry.secret)


def secret_unreadable_handler(request: Request[Any, Any, Any], exc: SecretUnreadable) -> Response[Problem]:
    headers = {"Retry-After": "30"} if exc.status == 503 else None
    return problem_response(request, exc.status, exc.code, exc.detail, title=exc.title, headers=headers)


class EnvController(Controller):
    path = "/v1/apps/{app:str}/env"
    tags = ("env",)
    exception_handlers = {SecretUnreadable: secret_unreadable_handler}  # noqa: RUF012 (Litestar's own attribute)

    @endpoint("GET", access=KeyScope.READ, errors=(404, 503), summary="List an app's env vars (values only with reveal)")
    def list(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        env_vars: NamedDependency[EnvService],
        app: FromPath[str],
        reveal: Annotated[bool, Reveal] = False,
    ) -> EnvOut | EnvRevealed:
        """Names, versions and flags; values only with `reveal=true` and the `admin` scope. That guards
        this listing only: values reach the app's containers, so code deployed with a `deploy` key can
        read them."""
        tenant_id = caller_tenant
        if not reveal:
            return EnvOut.of(env_vars.list(tenant_id, app))
        if not request.user.allows(KeyScope.ADMIN):
            raise Forbidden(
                f"Revealing values needs the 'admin' scope; key {request.user.key_id} has {sorted(request.user.scopes)}.",
                code="insufficient-scope",
            )
        mark_audited(request, "?reveal=true")  # who saw which secrets is part of the trail
        return EnvRevealed.of(env_vars.list(tenant_id, app, reveal=True))

    @endpoint("PUT", access=KeyScope.DEPLOY, errors=(404,), summary="Replace an app's whole env set")
    def replace(
        self,
        caller_tenant: NamedDependency[str],
        env_vars: NamedDependency[EnvService],
        app: FromPath[str],
        data: JSONBody[EnvReplace],
    ) -> EnvOut:
        """Values apply at the next release and reach the app's containers, where any code deployed with a
        `deploy` key can read them."""
        desired = {name: _value(entry) for name, entry in data.vars.items()}
        return EnvOut.of(env_vars.replace(caller_tenant, app, desired))

    @endpoint("PATCH", access=KeyScope.DEPLOY, errors=(404,), summary="Set and remove some of an app's env vars")
    def merge(
        self,
        caller_tenant: NamedDependency[str],
        env_vars: NamedDependency[EnvService],
        app: FromPath[str],
        data: JSONBody[EnvPatch],
    ) -> EnvOut:
        """Values apply at the next release and reach the app's containers, where any code deployed with a
        `deploy` key can read them."""
        changes = {name: None if entry is None else _value(entry) for name, entry in data.vars.items()}
        return EnvOut.of(env_vars.merge(caller_tenant, app, changes))

    @endpoint("PUT", "/{name:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Set one env var")
    def put_one(
        self,
        caller_tenant: NamedDependency[str],
        env_vars: NamedDependency[EnvService],
        app: FromPath[str],
        name: FromPath[str],
        data: JSONBody[EnvValueIn],
    ) -> EnvVarOut:
        """The value applies at the next release and reaches the app's containers, where any code deployed
        with a `deploy` key can read it."""
        return EnvVarOut.of(env_vars.set(caller_tenant, app, name, _value(data)))

    @endpoint("DELETE", "/{name:str}", access=KeyScope.DEPLOY, errors=(404,), summary="Remove one env var")
    def remove(
        self, caller_tenant: NamedDependency[str], env_vars: NamedDependency[EnvService], app: FromPath[str], name: FromPath[str]
    ) -> None:
        env_vars.unset(caller_tenant, app, name)
