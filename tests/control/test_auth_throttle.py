"""The failed-authentication throttle on its own, with a driven clock (the attack itself,
against a live server, is in tests/security/test_abuse_attacks.py)."""

from __future__ import annotations

import pytest

from control.domain.errors import Throttled
from control.security.auth_throttle import AuthThrottle, client_bucket
from control.security.rate_limit import SlidingWindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(quota: int = 3, window_s: float = 60, remember_s: float = 3600) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    return AuthThrottle(limiter, quota=quota, window_s=window_s, remember_s=remember_s, clock=clock), clock


def _fail(throttle: AuthThrottle, address: str, times: int) -> None:
    for _ in range(times):
        throttle.admit(address, "wrong")
        throttle.failed(address)


def test_over_budget_nothing_is_checked_except_what_worked_here_and_the_window_lifts_it() -> None:
    throttle, clock = _throttle()
    throttle.succeeded("192.0.2.1", "mine")
    _fail(throttle, "192.0.2.1", 3)
    with pytest.raises(Throttled) as refused:
        throttle.admit("192.0.2.1", "right-but-new-here")
    assert 1 <= refused.value.retry_after_s <= 60
    throttle.admit("192.0.2.1", "mine")  # worked from here before: still checked
    throttle.admit("192.0.2.2", "wrong")  # another address has its own budget
    clock.now += 60
    throttle.admit("192.0.2.1", "right-but-new-here")


def test_a_remembered_credential_is_forgotten_after_remember_s() -> None:
    throttle, clock = _throttle(window_s=10_000, remember_s=100)
    throttle.succeeded("192.0.2.1", "mine")
    _fail(throttle, "192.0.2.1", 3)
    clock.now += 101
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.1", "mine")


def test_an_ipv6_host_cannot_rotate_through_its_64() -> None:
    throttle, _ = _throttle()
    for n in range(3):
        throttle.failed(f"2001:db8:1:2::{n + 1:x}")
    with pytest.raises(Throttled):
        throttle.admit("2001:db8:1:2:ffff::9", "wrong")
    throttle.admit("2001:db8:1:3::1", "wrong")  # the next /64 is someone else
    assert client_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_bucket("testclient") == "testclient"


def test_quota_zero_turns_it_off() -> None:
    throttle, _ = _throttle(quota=0)
    _fail(throttle, "192.0.2.1", 50)
