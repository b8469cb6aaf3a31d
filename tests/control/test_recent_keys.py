"""Authentication from memory (control.domain.recent_keys): what it may and may not skip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control.domain.keys import KeyService
from control.domain.recent_keys import RecentKeys
from control.domain.tenants import TenantService
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.security.tokens import hash_token
from control.store.database import Store


def _setup(settings) -> tuple[Store, KeyService, TenantService, str, str]:  # type: ignore[no-untyped-def]
    db = Store(settings.database_url)
    keys, tenants = KeyService(db), TenantService(db)
    operator = keys.bootstrap_operator("op").key
    tenant = tenants.create("acme")
    issued = keys.issue(Principal.of(operator.id, None, operator.scopes), tenant.id, name="k", scopes=[KeyScope.READ],
                        expires_at=None)  # fmt: skip
    return db, keys, tenants, tenant.id, issued.token


def test_only_a_token_that_authenticated_is_answered_from_memory(settings) -> None:  # type: ignore[no-untyped-def]
    _db, keys, _tenants, _tenant_id, token = _setup(settings)
    assert keys.recently_authenticated(token) is None  # never seen: the database decides
    principal = keys.authenticate(token)
    assert keys.recently_authenticated(token) == principal
    assert keys.recently_authenticated(token[:-2] + "xx") is None  # the secret is checked every time


def test_revoking_and_suspending_apply_at_once(settings) -> None:  # type: ignore[no-untyped-def]
    _db, keys, tenants, tenant_id, token = _setup(settings)
    principal = keys.authenticate(token)
    tenants.set_status(tenant_id, "suspended")
    assert keys.recently_authenticated(token) is None
    tenants.set_status(tenant_id, "active")
    keys.authenticate(token)
    keys.revoke(tenant_id, principal.key_id)
    assert keys.recently_authenticated(token) is None


def test_an_entry_lasts_its_ttl_and_a_read_older_than_a_change_is_not_kept() -> None:
    now = [0.0]
    recent = RecentKeys(ttl_s=1.0, clock=lambda: now[0])
    principal = Principal.of("key_01aaaaaaaaaaaaaaaaaaaaaaaa", "ten_1", ("read",))
    token = "mrg_live_key_01aaaaaaaaaaaaaaaaaaaaaaaa_" + "a" * 43
    used = datetime.now(UTC)
    started = recent.read_at()
    recent.forget_tenant("ten_1")  # a suspension while that read was under way
    recent.remember(started, principal, hash_token(token), None, used)
    assert recent.principal(token, used, timedelta(seconds=60)) is None
    recent.remember(recent.read_at(), principal, hash_token(token), None, used)
    assert recent.principal(token, used, timedelta(seconds=60)) == principal
    assert recent.principal(token, used + timedelta(seconds=61), timedelta(seconds=60)) is None  # last_used write due
    now[0] = 1.0
    assert recent.principal(token, used, timedelta(seconds=60)) is None  # past its second
