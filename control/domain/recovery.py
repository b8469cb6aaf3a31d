"""Key recovery: a tenant's recovery code buys one new ``admin`` key and a new code.

Guessing is made slow and visible three ways: attempts per client address (the API's
limiter, before this runs), attempts per tenant name (here, in the same limiter), and a
lockout stored in the database: ``max_failures`` wrong codes for a name within
``lock_s`` seconds lock it for ``lock_s`` seconds, during which every attempt is refused
with 429 ``recovery-locked``, the right code too (so a lucky guess while locked learns
nothing). A successful recovery or an operator's reset clears the count.

An unknown tenant name goes down the same path as a known one: the same queries, a
constant-time comparison against a stand-in hash, the same failure count and lock, the
same 401 ``recovery-refused``. Whether a name exists is not what this endpoint tells.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from control.clock import utcnow
from control.domain.errors import NotFound, Throttled, Unauthenticated
from control.domain.keys import IssuedKey
from control.domain.recent_keys import recent_keys
from control.domain.records import Tenant
from control.domain.registration import add_admin_key
from control.domain.registration_records import RecoveryAttempts
from control.security.rate_limit import Policy, SlidingWindowLimiter
from control.security.tokens import hash_token, issue_recovery_code
from control.store.database import Store
from control.store.repositories.api_keys import ApiKeyRepository
from control.store.repositories.registration import RecoveryRepository
from control.store.repositories.tenants import TenantRepository

REFUSED = "recovery-refused"
LOCKED = "recovery-locked"
_REFUSED_DETAIL = (
    "The tenant name or the recovery code is wrong (the answer is the same for each). Check both; after "
    "{max} wrong codes in {lock} s recovery for this name locks for {lock} s. An operator can issue a new "
    "code: POST /v1/tenants/{{id}}/recovery-code."
)
_NO_TENANT = "ten_none"  # looked up for an unknown name, so that it costs the same queries
_NO_CODE_HASH = hash_token("mrg_rec_none")


class RecoveryLocked(Throttled):
    code = LOCKED
    title = "Recovery locked"


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    max_failures: int = 5
    lock_s: int = 900
    tenant_quota: int = 10  # attempts per name per window, wrong or right (0: no limit)
    window_s: int = 3600


@dataclass(frozen=True, slots=True)
class Recovered:
    tenant: Tenant
    key: IssuedKey
    recovery_code: str  # shown once, never stored
    revoked_keys: int


@dataclass(frozen=True, slots=True)
class _Refusal:
    tenant_id: str | None
    locked_now: bool  # this failure was the one that locked the name
    locked_for_s: int  # > 0: the name was already locked


class RecoveryService:
    def __init__(
        self, db: Store, limiter: SlidingWindowLimiter, config: RecoveryConfig, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.db, self.limiter, self.config, self.now = db, limiter, config, now

    def recover(self, tenant_name: str, code: str, *, revoke_keys: bool = False) -> Recovered:
        """The new key and code, or: 429 ``rate-limited`` (too many attempts for this name),
        429 ``recovery-locked``, 401 ``recovery-refused``. Refusals carry ``tenant_id`` (None
        for an unknown name) and ``locked_now`` in ``extra`` for the audit trail."""
        self._count_attempt(tenant_name)
        given = hash_token(code)
        outcome = self._attempt(tenant_name, given, revoke_keys)
        if isinstance(outcome, Recovered):
            if revoke_keys:
                tenant_id = outcome.tenant.id
                self.db.after_commit(lambda: recent_keys(self.db).forget_tenant(tenant_id))
            return outcome
        if outcome.locked_for_s:
            raise RecoveryLocked(
                f"Recovery for this tenant is locked after {self.config.max_failures} wrong codes: every attempt is "
                "refused, the right code too, until Retry-After seconds have passed. An operator can reset the "
                "code (POST /v1/tenants/{id}/recovery-code), which also lifts the lock.",
                retry_after_s=outcome.locked_for_s,
                tenant_id=outcome.tenant_id,
            )
        detail = _REFUSED_DETAIL.format(max=self.config.max_failures, lock=self.config.lock_s)
        raise Unauthenticated(detail, code=REFUSED, tenant_id=outcome.tenant_id, locked_now=outcome.locked_now)

    def _count_attempt(self, tenant_name: str) -> None:
        if self.config.tenant_quota <= 0:
            return
        policy = Policy("tenant", f"recovery:{tenant_name}", self.config.tenant_quota, float(self.config.window_s))
        decision = self.limiter.acquire([policy])
        if not decision.admitted:
            raise Throttled(
                f"Too many recovery attempts for this tenant ({self.config.tenant_quota} per {self.config.window_s} s). "
                "Nothing was checked; retry after Retry-After seconds.",
                code="rate-limited",
                retry_after_s=max(1, math.ceil(decision.retry_after)),
            )

    def _attempt(self, tenant_name: str, given: str, revoke_keys: bool) -> Recovered | _Refusal:
        """One transaction that always completes (a failure must be counted, so nothing here
        raises a refusal: the caller does, after the count is written)."""
        now = self.now()
        with self.db.write() as session:
            tenant = TenantRepository(session).by_name(tenant_name)
            recovery = RecoveryRepository(session)
            stored = recovery.code_hash(tenant.id if tenant is not None else _NO_TENANT)
            matches = hmac.compare_digest(given, stored or _NO_CODE_HASH) and stored is not None
            attempts = recovery.attempts(tenant_name)
            tenant_id = tenant.id if tenant is not None else None
            if attempts is not None and attempts.locked_until is not None and attempts.locked_until > now:
                return _Refusal(tenant_id, locked_now=False, locked_for_s=_seconds_until(attempts.locked_until, now))
            if tenant is None or stored is None or not matches:
                return _Refusal(tenant_id, locked_now=self._failed(recovery, tenant_name, attempts, now), locked_for_s=0)
            new_code, new_hash = issue_recovery_code()
            if not recovery.replace_code(tenant.id, stored, new_hash, now):  # another recovery used it first
                return _Refusal(tenant_id, locked_now=self._failed(recovery, tenant_name, attempts, now), locked_for_s=0)
            keys = ApiKeyRepository(session)
            key = add_admin_key(keys, tenant.id, name="recovery", created_by="recovery")
            revoked = keys.revoke_all(tenant.id, now, keep=key.key.id) if revoke_keys else 0
            recovery.clear_attempts(tenant_name)
            return Recovered(tenant=tenant, key=key, recovery_code=new_code, revoked_keys=revoked)

    def _failed(self, recovery: RecoveryRepository, name: str, attempts: RecoveryAttempts | None, now: datetime) -> bool:
        """Count one wrong code; True when it is the one that locks the name."""
        window = timedelta(seconds=self.config.lock_s)
        if attempts is None or attempts.first_failed_at <= now - window:
            attempts = RecoveryAttempts(name, 0, now, None)
        failures = attempts.failures + 1
        if failures >= self.config.max_failures > 0:
            recovery.put_attempts(RecoveryAttempts(name, 0, now, now + window))
            return True
        recovery.put_attempts(RecoveryAttempts(name, failures, attempts.first_failed_at, None))
        return False

    def reset(self, tenant_id: str) -> tuple[Tenant, str]:
        """An operator's new recovery code for the tenant (the old one stops working) and the
        end of any lock on its name."""
        now = self.now()
        with self.db.write() as session:
            tenant = TenantRepository(session).get(tenant_id)
            if tenant is None:
                raise NotFound.of("tenant", tenant_id)
            recovery = RecoveryRepository(session)
            code, code_hash = issue_recovery_code()
            recovery.set_code(tenant_id, code_hash, now)
            recovery.clear_attempts(tenant.name)
        return tenant, code

    def purge_stale(self) -> int:
        """Failure counts that can no longer lock anything (the retention sweep)."""
        now = self.now()
        with self.db.write() as session:
            return RecoveryRepository(session).purge_attempts(now - timedelta(seconds=self.config.lock_s), now)


def _seconds_until(when: datetime, now: datetime) -> int:
    return max(1, math.ceil((when - now).total_seconds()))
