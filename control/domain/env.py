"""An app's environment variables: sealed at rest, revealed only on request, resolved
in memory for deploys, and resealed under a new master key on rotation (``control.domain.rotation``).

Writes are all-or-nothing: every name and value is checked before the one write
transaction starts, and a write that changes anything bumps ``apps.env_version`` once
(a deploy pins the env version it used). A variable's own ``version`` counts its changes;
writing the same value and flag again is not a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from control.domain.errors import DomainError, Invalid, NotFound
from control.domain.names import ENV_NAME
from control.domain.records import ConfigVar, EnvApp, ReleaseConfig, StoredEnvVar
from control.security.keyring import (
    KeyringError,
    ReloadingKeyring,
    UnknownMasterKey,
    owner_aad,
)
from control.store.database import Store
from control.store.repositories.env_vars import EnvVarRepository

MAX_VALUE_BYTES = 64 * 1024
MAX_VARS_PER_APP = 200
# PORT is set from the app's `port`; MOORAGE_* is the platform's namespace in containers.
RESERVED_NAMES = frozenset({"PORT"})
RESERVED_PREFIX = "MOORAGE_"
log = structlog.get_logger("moorage.env")


class SecretUnreadable(DomainError):
    """A stored value could not be opened. Fails closed; says which variable and why,
    never the value. ``status`` is 503 when a key is missing (an operator can load it),
    500 when the stored bytes fail authentication (altered or moved)."""

    title = "Stored secret cannot be decrypted"

    def __init__(self, var: StoredEnvVar, error: KeyringError) -> None:
        missing = isinstance(error, UnknownMasterKey)
        self.status = 503 if missing else 500
        detail = (
            f"Env var '{var.name}' is sealed under master key '{var.master_key_id}', which this server does not hold. "
            "An operator must load that key (MOORAGE_MASTER_KEY_FILE / MOORAGE_MASTER_KEYS)."
            if missing
            else f"Env var '{var.name}' failed its integrity check ({error.reason}); it was altered or moved. "
            "Set it again to replace it, and report the request_id to the operator."
        )
        super().__init__(detail, code="master-key-unavailable" if missing else "secret-integrity-failure")


@dataclass(frozen=True, slots=True)
class EnvValue:
    value: str = field(repr=False)
    secret: bool = True


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    version: int
    secret: bool
    created_at: datetime
    updated_at: datetime
    value: str | None = field(default=None, repr=False)  # only when revealed


@dataclass(frozen=True, slots=True)
class EnvSet:
    app_id: str
    app_name: str
    env_version: int
    vars: list[EnvVar]


def value_aad(tenant_id: str, app_id: str, name: str) -> bytes:
    """Binds a value to its tenant, app and name (rotation reseals with this too)."""
    return owner_aad(tenant_id, app_id, name)


def _problems(name: str, value: EnvValue | None, name_field: str, value_field: str) -> list[dict[str, str]]:
    errors = []
    if not ENV_NAME.accepts(name):
        errors.append({"field": name_field, "message": f"must be {ENV_NAME.kind}: {ENV_NAME.rule}"})
    elif name in RESERVED_NAMES or name.upper().startswith(RESERVED_PREFIX):
        errors.append(
            {"field": name_field, "message": f"reserved: {sorted(RESERVED_NAMES)} and {RESERVED_PREFIX}* are set by the platform"}
        )
    if value is not None:
        if "\0" in value.value:
            errors.append({"field": value_field, "message": "values cannot contain NUL characters"})
        elif len(value.value.encode()) > MAX_VALUE_BYTES:
            errors.append({"field": value_field, "message": f"values are at most {MAX_VALUE_BYTES} bytes (UTF-8)"})
    return errors


def check_vars(changes: dict[str, EnvValue | None], *, single: bool = False, field: str = "vars") -> None:
    """All problems at once, each naming its field (``vars.NAME``, or ``name``/``value``)."""
    errors = [
        e
        for name, value in changes.items()
        for e in (_problems(name, value, "name", "value") if single else _problems(name, value, *[f"{field}.{name[:80]}"] * 2))
    ]
    if errors:
        fields = ", ".join(e["field"] for e in errors)
        raise Invalid(f"Invalid env vars ({fields}); nothing was changed. Fix them and retry.", errors=errors)


class EnvService:
    def __init__(self, db: Store, keyring: ReloadingKeyring) -> None:
        self.db = db
        self.keyring = keyring

    def _app(self, repo: EnvVarRepository, ref: str, *, previews: bool = False) -> EnvApp:
        app = repo.app(ref, previews=previews)
        if app is None:
            raise NotFound.of("app", ref)
        return app

    def _open(self, var: StoredEnvVar) -> str:
        try:
            return self.keyring.open(var.ciphertext, value_aad(var.tenant_id, var.app_id, var.name))
        except KeyringError as exc:
            log.error("env_var_unreadable", env_var_id=var.id, name=var.name, master_key_id=var.master_key_id, reason=exc.reason)
            raise SecretUnreadable(var, exc) from None

    def _view(self, app: EnvApp, stored: list[StoredEnvVar], *, reveal: bool) -> EnvSet:
        items = [
            EnvVar(v.name, v.version, v.secret, v.created_at, v.updated_at, self._open(v) if reveal else None) for v in stored
        ]
        return EnvSet(app.id, app.name, app.env_version, items)

    def list(self, tenant_id: str, app_ref: str, *, reveal: bool = False, previews: bool = False) -> EnvSet:
        with self.db.read() as session:
            repo = EnvVarRepository(session, tenant_id)
            app = self._app(repo, app_ref, previews=previews)
            stored = repo.list(app.id)
        return self._view(app, stored, reveal=reveal)

    def resolve(self, tenant_id: str, app_id: str) -> dict[str, str]:
        """Plaintext env for a deploy, in memory only; any unreadable value fails the whole call."""
        env = self.list(tenant_id, app_id, reveal=True, previews=True)
        return {v.name: v.value for v in env.vars if v.value is not None}

    def current_config(self, tenant_id: str, app_id: str) -> tuple[dict[str, str], int, tuple[ConfigVar, ...]]:
        """For a release: the plaintext values (in memory only), the env version, and which
        kept version of each var they are, from one read."""
        with self.db.read() as session:
            repo = EnvVarRepository(session, tenant_id)
            app = self._app(repo, app_id, previews=True)
            stored = repo.list(app.id)
            kept = repo.current_version_ids(app.id)
        values = {v.name: self._open(v) for v in stored}
        vars_ = tuple(ConfigVar(v.name, v.version, v.secret, kept[v.name]) for v in stored if v.name in kept)
        return values, app.env_version, vars_

    def open_config(self, tenant_id: str, app_id: str, config: ReleaseConfig) -> dict[str, str]:
        """The plaintext values a release was made with. ``SecretUnreadable`` if one cannot
        be opened (its master key is gone), ``NotFound`` if a version is no longer kept."""
        with self.db.read() as session:
            kept = EnvVarRepository(session, tenant_id).versions(app_id, [v.version_id for v in config.vars])
        values = {}
        for var in config.vars:
            stored = kept.get(var.version_id)
            if stored is None:
                raise NotFound(f"Version {var.version} of env var {var.name} is no longer kept; deploy from source instead.")
            values[var.name] = self._open(stored)
        return values

    def restore(self, tenant_id: str, app_id: str, config: ReleaseConfig) -> EnvSet:
        """The app's env vars become exactly those of ``config`` (a rollback's), values and
        secrecy; a var whose value differs gets a new version, as any change does."""
        values = self.open_config(tenant_id, app_id, config)
        secret = {v.name: v.secret for v in config.vars}
        return self._write(tenant_id, app_id, {n: EnvValue(v, secret[n]) for n, v in values.items()}, replace_all=True)

    def replace(self, tenant_id: str, app_ref: str, desired: dict[str, EnvValue]) -> EnvSet:
        return self._write(tenant_id, app_ref, dict(desired), replace_all=True)

    def merge(self, tenant_id: str, app_ref: str, changes: dict[str, EnvValue | None]) -> EnvSet:
        return self._write(tenant_id, app_ref, changes, replace_all=False)

    def set(self, tenant_id: str, app_ref: str, name: str, value: EnvValue) -> EnvVar:
        check_vars({name: value}, single=True)
        env = self._write(tenant_id, app_ref, {name: value}, replace_all=False)
        return next(v for v in env.vars if v.name == name)

    def unset(self, tenant_id: str, app_ref: str, name: str) -> None:
        with self.db.write() as session:
            repo = EnvVarRepository(session, tenant_id)
            app = self._app(repo, app_ref)
            if not any(v.name == name for v in repo.list(app.id)):
                raise NotFound.of("env var", name)
            repo.remove(app.id, [name])
            repo.bump_env_version(app.id)

    def _unchanged(self, var: StoredEnvVar, wanted: EnvValue) -> bool:
        if var.secret != wanted.secret:
            return False
        try:
            return self.keyring.open(var.ciphertext, value_aad(var.tenant_id, var.app_id, var.name)) == wanted.value
        except KeyringError:
            return False  # an unreadable value is replaced: writing it again is the repair

    def copy(self, tenant_id: str, source_id: str, target_id: str, overrides: dict[str, str | None]) -> EnvSet:
        """``target`` (a new preview) gets ``source``'s vars, each opened and sealed again under
        the target's own binding (a ciphertext is never copied: its AAD names its app), with
        ``overrides`` applied (``None`` removes one; a new name is secret). ``source`` is only read."""
        check_vars({name: None if v is None else EnvValue(v) for name, v in overrides.items()}, field="env")
        current = self.list(tenant_id, source_id, reveal=True, previews=True)
        values = {v.name: EnvValue(v.value, v.secret) for v in current.vars if v.value is not None}
        for name, value in overrides.items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = EnvValue(value, values[name].secret if name in values else True)
        return self._write(tenant_id, target_id, dict(values), replace_all=True, previews=True)

    def _write(
        self,
        tenant_id: str,
        app_ref: str,
        changes: dict[str, EnvValue | None],
        *,
        replace_all: bool,
        previews: bool = False,
    ) -> EnvSet:
        check_vars(changes)
        with self.db.write() as session:
            repo = EnvVarRepository(session, tenant_id)
            app = self._app(repo, app_ref, previews=previews)
            existing = {v.name: v for v in repo.list(app.id)}
            removed = [n for n in existing if (replace_all and n not in changes) or (n in changes and changes[n] is None)]
            final_count = len(set(existing) - set(removed) | {n for n, v in changes.items() if v is not None})
            if final_count > MAX_VARS_PER_APP:
                raise Invalid(
                    f"An app holds at most {MAX_VARS_PER_APP} env vars; this change would leave {final_count}. Nothing was changed.",
                    errors=[{"field": "vars", "message": f"at most {MAX_VARS_PER_APP} per app"}],
                )
            changed = bool(removed)
            repo.remove(app.id, removed)
            for name, wanted in changes.items():
                if wanted is None or (name in existing and self._unchanged(existing[name], wanted)):
                    continue
                sealed = self.keyring.seal(wanted.value, value_aad(tenant_id, app.id, name))
                if name in existing:
                    repo.overwrite(existing[name].id, ciphertext=sealed.blob, master_key_id=sealed.key_id, secret=wanted.secret)
                else:
                    repo.insert(app.id, name, ciphertext=sealed.blob, master_key_id=sealed.key_id, secret=wanted.secret)
                changed = True
            if changed:
                app = EnvApp(app.id, app.tenant_id, app.name, repo.bump_env_version(app.id))
            session.flush()
            stored = repo.list(app.id)
        return self._view(app, stored, reveal=False)
