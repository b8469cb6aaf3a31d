"""In-memory state kept per caller stays bounded: the API rate limiter, the failed-auth
throttle, the inference quota and the gateway's in-flight counts.

Each holds something per key, address, tenant or node. Callers come and go (keys are
revoked, addresses change, tenants are deleted), so every structure must shed what went
idle; otherwise memory grows with every caller ever seen. Clocks are driven by hand.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from control.domain import inference_quota
from control.domain.errors import Throttled
from control.domain.gateway_routing import NodeRouter
from control.domain.inference_limits import InferenceLimits
from control.domain.inference_quota import InferenceQuota, QuotaExceeded, Reservation
from control.domain.records import UsageRecord
from control.security import auth_throttle, rate_limit
from control.security.auth_throttle import AuthThrottle
from control.security.rate_limit import Policy, SlidingWindowLimiter
from runtime.resilience import BreakerRegistry

SWEEP = rate_limit._SWEEP_EVERY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(n: int, quota: int = 5, window: float = 10.0) -> Policy:
    return Policy("key", f"key:{n}", quota, window)


# -- the moving-window limiter -----------------------------------------------------------


def test_idle_buckets_are_dropped_by_the_sweep_and_active_ones_kept() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    for n in range(3 * SWEEP + 5):  # many keys, each calling once, then never again
        limiter.acquire([_key(n)])
    clock.now += 10.0  # all of them idle for a whole window
    active = Policy("key", "key:active", 4 * SWEEP, 10.0)
    for _ in range(SWEEP):
        clock.now += 0.001
        assert limiter.acquire([active]).admitted  # one key keeps calling; its admissions trigger the sweep
    assert limiter.footprint() == (1, SWEEP)
    assert limiter.acquire([active]).states[0].remaining == active.quota - SWEEP - 1  # what the sweep kept still counts


def test_the_sweep_runs_every_sweep_every_admissions() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    for n in range(SWEEP - 1):
        limiter.acquire([_key(n, window=1.0)])
    clock.now += 1.0
    assert limiter.footprint() == (SWEEP - 1, SWEEP - 1)
    limiter.acquire([_key(-1, window=1.0)])  # the SWEEP-th admission
    assert limiter.footprint() == (1, 1)
    clock.now += 1.0  # key:-1 is idle from here
    busy = Policy("key", "key:busy", 2 * SWEEP, 10.0)
    for _ in range(SWEEP // 2 + 1):
        limiter.acquire([busy])
    assert limiter.footprint() == (2, SWEEP // 2 + 2)  # the sweep waits for SWEEP admissions, no fewer
    for _ in range(SWEEP // 2 - 1):
        limiter.acquire([busy])
    assert limiter.footprint() == (1, SWEEP)


def test_the_sweep_drops_a_bucket_exactly_when_its_newest_entry_leaves_the_window() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    limiter.acquire([_key(0, window=10.0)])  # t = 1000: leaves the window at t = 1010
    clock.now += 0.5
    limiter.acquire([_key(1, window=10.0)])  # t = 1000.5: in the window until t = 1010.5
    limiter.acquire([_key(2, window=30.0)])  # its own, longer window
    clock.now = 1010.0
    for _ in range(SWEEP - 3):
        limiter.acquire([Policy("key", "key:busy", SWEEP, 1.0)])
    assert limiter.footprint()[0] == 3  # key:0 aged out, key:1 in its window, key:2 in its own, key:busy
    assert limiter.peek([_key(1, quota=1)]).admitted is False
    assert limiter.peek([_key(0, quota=1)]).admitted is True


def test_refusals_and_peeks_store_nothing() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    policy = _key(0, quota=3)
    for _ in range(50):
        limiter.acquire([policy])
    assert limiter.footprint() == (1, 3)  # one float per admission, never more than the quota
    for n in range(1, 5000):
        assert limiter.peek([_key(n)]).admitted
    assert limiter.footprint() == (1, 3)  # peeking at an unknown bucket keeps nothing
    tenant = Policy("tenant", "tenant:t", 1, 10.0)
    assert limiter.acquire([tenant]).admitted
    for n in range(1, 100):  # new keys of a tenant over its budget: refused, nothing kept for them
        assert not limiter.acquire([_key(n), tenant]).admitted
    assert limiter.footprint() == (2, 4)


def test_a_bucket_emptied_by_a_peek_is_swept() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    limiter.acquire([_key(0, window=1.0)])
    clock.now += 2.0
    assert limiter.peek([_key(0, window=1.0)]).admitted  # prunes its log to nothing
    for _ in range(SWEEP - 1):
        limiter.acquire([_key(1, quota=SWEEP, window=100.0)])
    assert limiter.footprint() == (1, SWEEP - 1)


def test_two_policies_on_one_bucket_count_twice_and_report_the_same() -> None:
    limiter = SlidingWindowLimiter(Clock())
    decision = limiter.acquire([_key(0, quota=4), _key(0, quota=4)])
    assert [s.remaining for s in decision.states] == [2, 2]
    assert limiter.footprint() == (1, 2)


# -- the failed-authentication throttle ----------------------------------------------------


def _throttle(clock: Clock, remember_s: float = 100.0) -> AuthThrottle:
    return AuthThrottle(SlidingWindowLimiter(clock), quota=3, window_s=60, remember_s=remember_s, clock=clock)


def test_credentials_remembered_per_address_are_capped_least_recent_first() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    cap = auth_throttle._KNOWN_PER_ADDRESS
    throttle.succeeded("192.0.2.1", "first")
    for n in range(cap - 1):
        throttle.succeeded("192.0.2.1", f"credential-{n}")
    throttle.succeeded("192.0.2.1", "first")  # used again: now the most recent
    throttle.succeeded("192.0.2.1", "one-more")
    assert throttle.footprint() == (1, cap)
    for _ in range(3):
        throttle.failed("192.0.2.1")
    throttle.admit("192.0.2.1", "first")  # kept: used recently
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.1", "credential-0")  # the least recently used was dropped


def test_addresses_remembered_are_capped_least_recently_successful_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_throttle, "_MAX_ADDRESSES", 4)
    clock = Clock()
    throttle = _throttle(clock)
    for n in range(4):
        throttle.succeeded(f"192.0.2.{n}", "key")
    throttle.succeeded("192.0.2.0", "key")  # the oldest works again: now the most recent
    throttle.succeeded("198.51.100.1", "key")
    assert throttle.footprint() == (4, 4)
    for address in ("192.0.2.0", "192.0.2.1"):
        for _ in range(3):
            throttle.failed(address)
    throttle.admit("192.0.2.0", "key")
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.1", "key")  # dropped: the least recently successful


def test_the_default_caps_keep_the_throttle_to_a_few_mebibytes() -> None:
    # A digest (32 bytes) and a float in an OrderedDict cost about 200 bytes.
    assert auth_throttle._MAX_ADDRESSES * 200 <= 16 * 2**20
    assert 1 <= auth_throttle._KNOWN_PER_ADDRESS <= 1024


def test_the_sweep_forgets_addresses_idle_past_remember_s() -> None:
    clock = Clock()
    throttle = _throttle(clock, remember_s=100.0)
    for n in range(50):
        throttle.succeeded(f"2001:db8:{n:x}::1", "key")
    throttle.succeeded("192.0.2.1", "old")
    clock.now += 50.0
    throttle.succeeded("192.0.2.1", "recent")
    clock.now += 50.0  # the 51 first successes are exactly remember_s old; "recent" is half that
    for _ in range(auth_throttle._SWEEP_EVERY - 52 - 1):
        throttle.succeeded("192.0.2.9", "busy")
    assert throttle.footprint() == (52, 53)
    throttle.succeeded("192.0.2.9", "busy")  # the sweep runs on this success
    assert throttle.footprint() == (2, 2)
    for _ in range(3):
        throttle.failed("192.0.2.1")
    throttle.admit("192.0.2.1", "recent")
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.1", "old")


def test_failures_and_admissions_keep_no_memory_of_their_own() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    for n in range(2000):
        throttle.admit(f"203.0.113.{n % 250}", "guess")  # peeks only
    assert throttle.limiter.footprint() == (0, 0) and throttle.footprint() == (0, 0)
    for n in range(2000):
        throttle.failed(f"2001:db8:{n:x}::1")  # one guess from each of 2000 hosts
    assert throttle.limiter.footprint() == (2000, 2000)
    clock.now += 60.0  # they all stop
    fresh = SWEEP - 2000 % SWEEP  # failures until the limiter's next sweep
    for n in range(fresh):
        throttle.failed(f"198.51.100.{n}")
    assert throttle.limiter.footprint() == (fresh, fresh)


# -- the inference quota ---------------------------------------------------------------------

LIMITS = InferenceLimits(requests_per_minute=5, tokens_per_minute=1000, token_budget=10**9, budget_period="day")
QUOTA_SWEEP = inference_quota._SWEEP_EVERY


class FakeLimits:
    def effective(self, tenant_id: str) -> InferenceLimits:
        return LIMITS


@dataclass
class FakeUsage:
    recorded: list[UsageRecord] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    def record(self, record: UsageRecord) -> None:
        self.recorded.append(record)

    def tokens_since(self, tenant_id: str, since: datetime) -> int:
        self.reads.append(tenant_id)
        return sum(r.total_tokens for r in self.recorded if r.tenant_id == tenant_id and r.created_at >= since)


def _quota(clock: Clock) -> tuple[InferenceQuota, FakeUsage]:
    usage = FakeUsage()
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    return InferenceQuota(FakeLimits(), usage, clock=clock, now=lambda: now), usage  # type: ignore[arg-type]


def _record(reservation: Reservation, tokens: int) -> UsageRecord:
    return UsageRecord(
        id="use_1", tenant_id=reservation.tenant_id, api_key_id="key_1", request_id="req_1", model="m", node_id=None,
        endpoint="/v1/completions", stream=False, status="ok", http_status=200, prompt_tokens=tokens, completion_tokens=0,
        reserved_tokens=reservation.tokens, usage_reported=True, latency_ms=1, ttft_ms=None,
        created_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )  # fmt: skip


def test_idle_tenants_are_dropped_and_their_period_total_read_again() -> None:
    clock = Clock()
    quota, usage = _quota(clock)
    quota.reserve("ten_open", 10)  # a long request: still open when the sweep comes
    for n in range(QUOTA_SWEEP - 3):
        reservation = quota.reserve(f"ten_{n}", 1)
        quota.settle(reservation, _record(reservation, 1))
    clock.now += 1.0
    quota.reserve("ten_recent", 1)
    assert usage.reads == ["ten_open", *(f"ten_{n}" for n in range(QUOTA_SWEEP - 3)), "ten_recent"]
    assert quota.footprint() == (QUOTA_SWEEP - 1, 2 * (QUOTA_SWEEP - 1))
    clock.now += inference_quota.WINDOW_S - 1.0  # all but ten_recent idle for exactly a window
    quota.reserve("ten_last", 1)  # the sweep runs after this reservation
    assert set(quota._tenants) == {"ten_open", "ten_recent", "ten_last"}
    assert quota.footprint() == (3, 4)  # ten_open's entry left the window; its reservation did not
    assert quota._tenants["ten_open"].outstanding == 10
    quota.reserve("ten_0", 1)  # a dropped tenant starts again from the usage table
    assert usage.reads[-1] == "ten_0"
    assert quota._tenants["ten_0"].period_used == 1


def test_a_tenant_in_use_during_the_sweep_is_kept() -> None:
    clock = Clock()
    quota, _ = _quota(clock)
    reservation = quota.reserve("ten_a", 1)
    quota.settle(reservation, _record(reservation, 1))
    clock.now += inference_quota.WINDOW_S
    with quota._tenants["ten_a"].lock:  # a reservation of ten_a is under way while the sweep runs
        for n in range(QUOTA_SWEEP - 1):
            quota.reserve(f"ten_{n}", 1)
    assert "ten_a" in quota._tenants and not quota._tenants["ten_a"].dropped


def test_a_reservation_that_raced_the_sweep_uses_the_live_state() -> None:
    clock = Clock()
    quota, _ = _quota(clock)
    stale = quota._state("ten_a")
    stale.dropped = True  # as the sweep leaves a state it removed
    quota._tenants.pop("ten_a")
    looked_up: list[object] = []
    original = quota._state

    def state(tenant_id: str) -> inference_quota._TenantState:
        found = stale if not looked_up else original(tenant_id)  # the first lookup saw the old state
        looked_up.append(found)
        return found

    quota._state = state  # type: ignore[method-assign]
    reservation = quota.reserve("ten_a", 7)
    assert looked_up[0] is stale and looked_up[1] is quota._tenants["ten_a"]
    assert quota._tenants["ten_a"].outstanding == 7 and not stale.requests
    assert reservation.tenant_id == "ten_a"


def test_refused_reservations_count_toward_the_sweep_and_store_nothing() -> None:
    clock = Clock()
    quota, _ = _quota(clock)
    for _ in range(LIMITS.requests_per_minute):
        quota.reserve("ten_a", 1)
    for _ in range(QUOTA_SWEEP - LIMITS.requests_per_minute - 1):
        with pytest.raises(QuotaExceeded):
            quota.reserve("ten_a", 1)
    assert quota.footprint() == (1, 2 * LIMITS.requests_per_minute)
    clock.now += inference_quota.WINDOW_S
    with pytest.raises(QuotaExceeded):
        quota.reserve("ten_b", LIMITS.tokens_per_minute + 1)  # the SWEEP-th: too big on its own
    assert quota.footprint() == (1, 0)  # ten_a still has its reservations open; ten_b dropped


def test_concurrent_reservations_and_sweeps_never_lose_a_count() -> None:
    clock = Clock()
    quota, _ = _quota(clock)
    errors: list[BaseException] = []

    def work(tenant: str) -> None:
        try:
            for _ in range(400):
                reservation = quota.reserve(tenant, 1)
                quota.settle(reservation, _record(reservation, 1))
                clock.now += 60.0
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"ten_{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(state.outstanding == 0 for state in quota._tenants.values())
    assert len(quota.usage.recorded) == 4 * 400  # type: ignore[attr-defined]


# -- the gateway's in-flight counts ----------------------------------------------------------


def test_in_flight_counts_leave_nothing_behind() -> None:
    router = NodeRouter(BreakerRegistry(), failure_threshold=3, reset_timeout_s=30)
    for n in range(1000):
        router.begin(f"node_{n}")
        router.begin(f"node_{n}")
        assert router.in_flight(f"node_{n}") == 2
        router.end(f"node_{n}")
        router.end(f"node_{n}")
    assert router.in_flight("node_0") == 0 and router.in_flight("node_unknown") == 0
    router.order([(f"node_{n}", n) for n in range(5)])
    assert len(router._in_flight) == 0
