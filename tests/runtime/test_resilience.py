"""Circuit breaker + retry policy (no Docker needed). Acceptance: opens after the threshold,
fails fast with retry_after, half-opens after the cool-down, closes on success, reopens on a
half-open failure; a real refusing TCP socket drives it; only safe errors are retried."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import docker.errors
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.docker_engine import DockerEngine
from runtime.resilience import (
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Guard,
    RetryPolicy,
    guarded,
    is_dependency_failure,
    safe_to_retry,
)
from runtime.settings import RuntimeSettings


class ManualClock:
    """An injected clock (time is an input of the breaker, not a dependency)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: ManualClock, threshold: int = 3, reset: float = 10.0, registry: BreakerRegistry | None = None
) -> CircuitBreaker:
    return CircuitBreaker(
        "dep", failure_threshold=threshold, reset_timeout=reset, clock=clock, registry=registry or BreakerRegistry()
    )


def boom() -> None:
    raise ConnectionRefusedError("refused")


def ok() -> str:
    return "ok"


def test_full_cycle_open_fail_fast_half_open_close_reopen() -> None:
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            b.call(boom)
    assert b.state is BreakerState.CLOSED
    with pytest.raises(ConnectionRefusedError):
        b.call(boom)
    assert b.state is BreakerState.OPEN

    calls = []
    clock.now += 4
    with pytest.raises(CircuitOpenError) as err:
        b.call(lambda: calls.append(1))
    assert calls == [], "an open breaker must not call the dependency"
    assert err.value.retry_after == pytest.approx(6.0)
    assert b.snapshot().retry_after == pytest.approx(6.0)

    clock.now += 6
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(ConnectionRefusedError):  # trial fails: straight back to open
        b.call(boom)
    assert b.state is BreakerState.OPEN
    assert b.snapshot().retry_after == pytest.approx(10.0)

    clock.now += 10
    assert b.call(ok) == "ok"  # trial succeeds: closed, counter reset
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().consecutive_failures == 0
    assert b.snapshot().opened_total == 2


def test_success_resets_consecutive_failures() -> None:
    b = breaker(ManualClock())
    for _ in range(5):
        with pytest.raises(ConnectionRefusedError):
            b.call(boom)
        with pytest.raises(ConnectionRefusedError):
            b.call(boom)
        b.call(ok)
    assert b.state is BreakerState.CLOSED


def test_half_open_admits_one_trial_at_a_time_across_threads() -> None:
    clock = ManualClock()
    b = breaker(clock, threshold=1)
    with pytest.raises(ConnectionRefusedError):
        b.call(boom)
    clock.now += 10
    gate, admitted, refused = threading.Event(), [], []

    def trial() -> None:
        try:
            b.call(lambda: (admitted.append(1), gate.wait(5)))
        except CircuitOpenError:
            refused.append(1)

    threads = [threading.Thread(target=trial) for _ in range(8)]
    for t in threads:
        t.start()
    while len(admitted) + len(refused) < 8:
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join()
    assert len(admitted) == 1 and len(refused) == 7
    assert b.state is BreakerState.CLOSED


def test_registry_lists_states_and_notifies_changes() -> None:
    reg = BreakerRegistry()
    clock = ManualClock()
    changes: list[tuple[str, str, str]] = []
    reg.add_listener(lambda name, old, new: changes.append((name, old.value, new.value)))
    b = breaker(clock, threshold=1, registry=reg)
    CircuitBreaker("other", registry=reg)
    with pytest.raises(ConnectionRefusedError):
        b.call(boom)
    snap = {s.name: s.state for s in reg.snapshot()}
    assert snap == {"dep": BreakerState.OPEN, "other": BreakerState.CLOSED}
    clock.now += 10
    b.call(ok)
    assert changes == [("dep", "closed", "open"), ("dep", "open", "half_open"), ("dep", "half_open", "closed")]


def test_async_acall_and_cancellation_leaves_no_stuck_trial() -> None:
    clock = ManualClock()
    b = breaker(clock, threshold=1)

    async def fail() -> None:
        raise ConnectionRefusedError()

    async def hang() -> None:
        await asyncio.sleep(10)

    async def scenario() -> None:
        with pytest.raises(ConnectionRefusedError):
            await b.acall(fail)
        with pytest.raises(CircuitOpenError):
            await b.acall(fail)
        clock.now += 10
        task = asyncio.ensure_future(b.acall(hang))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await b.acall(asyncio.sleep, 0, "fine") == "fine"  # the slot was released

    asyncio.run(scenario())
    assert b.state is BreakerState.CLOSED


# --- a real failing dependency -----------------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port with nothing listening: connections are really refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


class Pinger:
    def __init__(self, guard: Guard, url: str) -> None:
        self.guard, self.url = guard, url

    @guarded(idempotent=True)
    def ping(self) -> int:
        return httpx.get(self.url, timeout=1.0).status_code

    @guarded(idempotent=True)
    async def aping(self) -> int:
        async with httpx.AsyncClient(timeout=1.0) as c:
            return (await c.get(self.url)).status_code


def test_refusing_socket_opens_breaker_then_recovers(refusing_port: int) -> None:
    clock = ManualClock()
    sleeps: list[float] = []
    guard = Guard(breaker(clock, threshold=2, reset=5.0), RetryPolicy(attempts=3, sleep=sleeps.append))
    pinger = Pinger(guard, f"http://127.0.0.1:{refusing_port}/")
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            pinger.ping()
    assert len(sleeps) == 4, "connect refusals are retried (nothing was sent)"
    assert sleeps[1] > sleeps[0] > 0, "exponential backoff"
    assert guard.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as err:
        pinger.ping()
    assert 0 < err.value.retry_after <= 5.0
    assert len(sleeps) == 4, "no retries once open"

    # The dependency comes back on the same port; after the cool-down one trial closes it.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", refusing_port))
    server.listen()
    t = threading.Thread(target=lambda: _answer_once(server))
    t.start()
    clock.now += 5.0
    assert guard.breaker.state is BreakerState.HALF_OPEN
    assert pinger.ping() == 204
    t.join()
    server.close()
    assert guard.breaker.state is BreakerState.CLOSED


def _answer_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")


def test_async_guard_on_refusing_socket(refusing_port: int) -> None:
    guard = Guard(breaker(ManualClock(), threshold=1), RetryPolicy(attempts=2, initial_backoff=0.001))
    pinger = Pinger(guard, f"http://127.0.0.1:{refusing_port}/")

    async def scenario() -> None:
        with pytest.raises(httpx.ConnectError):
            await pinger.aping()
        with pytest.raises(CircuitOpenError):
            await pinger.aping()

    asyncio.run(scenario())


def test_docker_engine_down_fails_fast(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real docker SDK against a socket path where no dockerd listens."""
    settings = RuntimeSettings(docker_url=f"unix://{tmp_path}/docker.sock", breaker_failure_threshold=2, breaker_reset_timeout=30)
    engine = DockerEngine(settings, registry=BreakerRegistry())
    engine.guard.retry = RetryPolicy(attempts=2, initial_backoff=0.001, jitter=0.001)
    for _ in range(2):
        with pytest.raises(Exception) as err:
            engine.ping()
        assert not isinstance(err.value, CircuitOpenError)
        assert safe_to_retry(err.value, idempotent=False), "no socket = nothing sent"
    with pytest.raises(CircuitOpenError):
        engine.ping()
    health = engine.health()
    assert not health.ok and "CircuitOpenError" in (health.error or "")


# --- what is retried --------------------------------------------------------------------


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


def _docker_api_error(status: int) -> docker.errors.APIError:
    response = httpx.Response(status)  # only .status_code is read
    return docker.errors.APIError("engine said no", response=response)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "idempotent", "retried"),
    [
        (ConnectionRefusedError(), False, True),
        (ConnectionRefusedError(), True, True),
        (ConnectionResetError(), False, False),  # may have been applied: don't repeat a mutation
        (ConnectionResetError(), True, True),
        (TimeoutError(), False, False),
        (TimeoutError(), True, True),
        (StatusError(503), True, True),
        (StatusError(503), False, False),
        (StatusError(500), True, True),
        (StatusError(501), True, False),
        (StatusError(404), True, False),
        (StatusError(409), True, False),
        (_docker_api_error(502), True, True),
        (_docker_api_error(502), False, False),
        (docker.errors.NotFound("gone"), True, False),
        (ValueError("bug"), True, False),
        (CircuitOpenError("x", 1.0), True, False),
    ],
)
def test_only_safe_errors_are_retried(exc: Exception, idempotent: bool, retried: bool) -> None:
    attempts = []

    def fn() -> None:
        attempts.append(1)
        raise exc

    guard = Guard(breaker(ManualClock(), threshold=100), RetryPolicy(attempts=3, sleep=lambda _: None))
    with pytest.raises(type(exc)):
        guard.call(fn, idempotent=idempotent)
    assert len(attempts) == (3 if retried else 1)


def test_answers_do_not_count_as_dependency_failures() -> None:
    """A 404/409 means the engine is up; a 5xx on a mutation may be the workload's fault."""
    assert not is_dependency_failure(StatusError(404), idempotent=True)
    assert not is_dependency_failure(StatusError(500), idempotent=False)
    assert is_dependency_failure(StatusError(500), idempotent=True)
    assert is_dependency_failure(ConnectionRefusedError(), idempotent=False)
    b = breaker(ManualClock(), threshold=1)
    guard = Guard(b, RetryPolicy(attempts=1))
    for _ in range(3):
        with pytest.raises(StatusError):
            guard.call(lambda: (_ for _ in ()).throw(StatusError(404)), idempotent=True)
    assert b.state is BreakerState.CLOSED


# --- property: the breaker agrees with a reference model ---------------------------------

OPS = st.lists(st.one_of(st.just("ok"), st.just("fail"), st.floats(0, 20).map(lambda d: ("tick", d))), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, threshold=st.integers(1, 5), reset=st.floats(0.5, 10))
def test_breaker_matches_model(ops: list[object], threshold: int, reset: float) -> None:
    clock = ManualClock()
    b = breaker(clock, threshold=threshold, reset=reset)
    state, failures, opened_at = "closed", 0, 0.0
    for op in ops:
        if isinstance(op, tuple):
            clock.now += op[1]
            continue
        if state == "open" and clock.now - opened_at >= reset:
            state = "half_open"
        if state == "open":
            with pytest.raises(CircuitOpenError) as err:
                b.call(ok)
            assert err.value.retry_after == pytest.approx(opened_at + reset - clock.now)
            continue
        if op == "ok":
            assert b.call(ok) == "ok"
            state, failures = "closed", 0
        else:
            with pytest.raises(ConnectionRefusedError):
                b.call(boom)
            failures += 1
            if state == "half_open" or failures >= threshold:
                state, opened_at = "open", clock.now
        assert b.state.value == state
