"""Properties of the moving-window limiter under arbitrary request timings (injected clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.security.rate_limit import Policy, SlidingWindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# Integer milliseconds keep the arithmetic exact; gaps of 0 model simultaneous requests.
gaps = st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=120)
quotas = st.integers(min_value=1, max_value=8)
windows = st.integers(min_value=1, max_value=5000)


def _in_window(times: list[float], end: float, window: float) -> int:
    return sum(1 for t in times if end - window < t <= end)


@given(gaps, quotas, windows)
def test_never_more_than_quota_in_any_window_and_never_stricter(steps: list[int], quota: int, window: int) -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    policy = Policy("key", "key:a", quota, float(window))
    admitted: list[float] = []
    for step in steps:
        clock.now += step
        decision = limiter.acquire([policy])
        # Exact: admitted if and only if fewer than `quota` were admitted in the window ending now.
        assert decision.admitted == (_in_window(admitted, clock.now, window) < quota)
        if decision.admitted:
            admitted.append(clock.now)
            assert decision.states[0].remaining == quota - _in_window(admitted, clock.now, window)
        else:
            assert decision.retry_after > 0 and decision.exhausted == ("key",)
    for end in admitted:  # every window of length `window` (they are worst at admission instants)
        assert _in_window(admitted, end, window) <= quota


@given(gaps, quotas, windows)
def test_retry_after_is_exactly_when_room_returns(steps: list[int], quota: int, window: int) -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    policy = Policy("key", "key:a", quota, float(window))
    for step in steps:
        clock.now += step
        decision = limiter.acquire([policy])
        if not decision.admitted:
            probe = SlidingWindowLimiter(clock)  # same history, checked without disturbing it
            probe._buckets = {k: v.copy() for k, v in limiter._buckets.items()}
            probe._windows = dict(limiter._windows)
            clock.now += decision.retry_after - 0.5
            assert not probe.acquire([policy]).admitted  # a moment early: still refused
            clock.now += 0.5
            assert limiter.acquire([policy]).admitted  # on time: admitted
            return


@given(st.lists(st.tuples(st.integers(0, 500), st.sampled_from("ab")), min_size=1, max_size=150), quotas, quotas, windows)
def test_key_and_tenant_policies_hold_together(
    requests: list[tuple[int, str]], key_quota: int, tenant_quota: int, window: int
) -> None:
    """Two keys of one tenant: each key within its quota, the tenant within its own, and a
    refusal by either policy consumes nothing from the other."""
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    for step, key in requests:
        clock.now += step
        policies = [
            Policy("key", f"key:{key}", key_quota, float(window)),
            Policy("tenant", "tenant:t", tenant_quota, float(window)),
        ]
        both = admitted["a"] + admitted["b"]
        expected = _in_window(admitted[key], clock.now, window) < key_quota and _in_window(both, clock.now, window) < tenant_quota
        decision = limiter.acquire(policies)
        assert decision.admitted == expected
        if decision.admitted:
            admitted[key].append(clock.now)
    everything = admitted["a"] + admitted["b"]
    for end in everything:
        assert _in_window(everything, end, window) <= tenant_quota
        for times in admitted.values():
            assert _in_window(times, end, window) <= key_quota


def test_a_lowered_quota_waits_for_the_excess_to_age_out() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    for second in range(5):
        clock.now = float(second)
        assert limiter.acquire([Policy("key", "k", 5, 10.0)]).admitted
    refused = limiter.acquire([Policy("key", "k", 2, 10.0)])
    # 5 counted, quota now 2: room returns when the 4th oldest (t=3) leaves, at t=13.
    assert not refused.admitted and refused.retry_after == pytest.approx(13.0 - 4.0)
    assert refused.retry_after_s == 9


def test_policies_must_make_sense() -> None:
    for quota, window in ((0, 60.0), (1, 0.0), (1, -1.0)):
        with pytest.raises(ValueError) as refused:
            Policy("key", "k", quota, window)
        assert str(refused.value) == "a rate-limit policy needs quota >= 1 and window > 0"
    assert Policy("key", "k", 1, 0.001).quota == 1
