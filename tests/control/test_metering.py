"""The metering rules without a database or Docker: deltas of cumulative counters per container
incarnation (a restart or a reset counts from 0, never a negative delta, never twice), gauges as
byte-seconds with their peak, and hourly roll-up split at hour boundaries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control.domain import metering as M

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC).timestamp()  # on an hour boundary
H10 = datetime(2026, 12, 3, 10, tzinfo=UTC)
H11 = datetime(2026, 12, 3, 11, tzinfo=UTC)


def reading(at: float, cpu: float, *, started: str = "s1", container: str = "c1", tenant: str = "t1",
            memory: int = 0, peak: int = 0, rx: float = 0.0, born: float | None = None) -> M.Reading:  # fmt: skip
    return M.Reading(
        container_id=container,
        tenant_id=tenant,
        started_at=started,
        at=at,
        counters={M.CPU_SECONDS: cpu, M.NET_RX_BYTES: rx},
        memory_bytes=memory,
        memory_peak_bytes=peak,
        started_epoch=born,
    )


def cpu_of(used: list[M.Usage]) -> list[float]:
    return [round(u.counters[M.CPU_SECONDS], 6) for u in used]


def test_a_container_running_before_the_tracker_started_only_sets_a_baseline() -> None:
    tracker = M.CounterTracker(started=T0)
    assert tracker.observe([reading(T0 + 30, 100.0, born=T0 - 3600)]) == []
    assert cpu_of(tracker.observe([reading(T0 + 60, 102.5, born=T0 - 3600)])) == [2.5]


def test_a_container_started_while_watched_counts_from_0() -> None:
    tracker = M.CounterTracker(started=T0)
    [first] = tracker.observe([reading(T0 + 30, 4.0, born=T0 + 20)])
    assert first.counters[M.CPU_SECONDS] == 4.0 and first.start == T0 + 20


def test_a_restart_counts_the_new_incarnation_from_0_and_never_doubles() -> None:
    tracker = M.CounterTracker(started=T0)
    tracker.observe([reading(T0 + 30, 10.0, born=T0 - 1)])
    assert cpu_of(tracker.observe([reading(T0 + 60, 12.0, born=T0 - 1)])) == [2.0]
    # started again: counters from 0; what it used since its restart is all new
    assert cpu_of(tracker.observe([reading(T0 + 90, 3.0, started="s2", born=T0 + 70)])) == [3.0]
    # even when the new incarnation's counter already passed the old one's
    assert cpu_of(tracker.observe([reading(T0 + 120, 20.0, started="s3", born=T0 + 100)])) == [20.0]
    assert cpu_of(tracker.observe([reading(T0 + 150, 21.0, started="s3", born=T0 + 100)])) == [1.0]


def test_a_counter_that_goes_down_is_a_reset_not_a_negative_delta() -> None:
    tracker = M.CounterTracker(started=T0)
    tracker.observe([reading(T0 + 30, 50.0, rx=1000, born=T0 - 1)])
    [used] = tracker.observe([reading(T0 + 60, 1.5, rx=1200, born=T0 - 1)])
    assert used.counters == {M.CPU_SECONDS: 1.5, M.NET_RX_BYTES: 200.0}
    assert all(v >= 0 for v in used.counters.values())


def test_a_container_missing_from_a_pass_is_not_counted_from_0_when_it_comes_back() -> None:
    tracker = M.CounterTracker(started=T0, forget_after_s=600)
    tracker.observe([reading(T0 + 30, 4.0, container="c2", born=T0 + 10)])
    tracker.observe([reading(T0 + 60, 1.0, born=T0 - 1)])  # c2 unreadable in this pass
    [back] = tracker.observe([reading(T0 + 90, 5.0, container="c2", born=T0 + 10)])
    assert back.counters[M.CPU_SECONDS] == 1.0
    tracker.observe([reading(T0 + 1000, 2.0, born=T0 - 1)])
    assert set(tracker._last) == {"c1"}  # c2 gone for longer than forget_after_s


def test_the_peak_is_the_runtimes_high_water_mark_only_when_it_rose_in_the_interval() -> None:
    tracker = M.CounterTracker(started=T0)
    tracker.observe([reading(T0 + 30, 0, memory=10, peak=300, born=T0 - 1)])
    [rose] = tracker.observe([reading(T0 + 60, 0, memory=20, peak=400, born=T0 - 1)])
    [flat] = tracker.observe([reading(T0 + 90, 0, memory=30, peak=400, born=T0 - 1)])
    assert (rose.memory_peak_bytes, flat.memory_peak_bytes) == (400, 30)


def test_a_gap_longer_than_the_bound_holds_gauges_for_the_bound_only() -> None:
    tracker = M.CounterTracker(started=T0, max_gap_s=60)
    tracker.observe([reading(T0, 0, born=T0 - 1)])
    [used] = tracker.observe([reading(T0 + 600, 1.0, memory=100, born=T0 - 1)])
    assert used.start == T0 + 540


def test_hours_split_in_proportion_to_time() -> None:
    assert list(M.split_hours(T0 + 3590, T0 + 3620)) == [(H10, pytest.approx(1 / 3)), (H11, pytest.approx(2 / 3))]
    assert list(M.split_hours(T0 + 10, T0 + 40)) == [(H10, 1.0)]
    assert list(M.split_hours(T0 + 3600, T0 + 3600)) == [(H11, 1.0)]


def test_the_rollup_sums_counters_and_byte_seconds_per_tenant_and_hour_across_a_boundary() -> None:
    rollup = M.Rollup()
    rollup.usage(
        [
            M.Usage("t1", T0 + 3570, T0 + 3630, {M.CPU_SECONDS: 6.0}, memory_bytes=100, memory_peak_bytes=150),
            M.Usage("t1", T0 + 3570, T0 + 3630, {M.CPU_SECONDS: 0.0}, memory_bytes=50, memory_peak_bytes=60),
            M.Usage("t2", T0 + 10, T0 + 40, {M.CPU_SECONDS: 1.0}, memory_bytes=10, memory_peak_bytes=10),
        ]
    )
    rows = {(t, h, r): (round(a, 6), p) for t, h, r, a, p in rollup.items()}
    assert rows[("t1", H10, M.CPU_SECONDS)][0] == 3.0 and rows[("t1", H11, M.CPU_SECONDS)][0] == 3.0
    assert rows[("t1", H10, M.MEMORY)][0] == 150 * 30 and rows[("t1", H11, M.MEMORY)][0] == 150 * 30
    assert rows[("t1", H11, M.MEMORY)][1] == 210  # two containers' peaks in one reading, summed
    assert rows[("t2", H10, M.CPU_SECONDS)] == (1.0, 0.0)
    assert ("t1", H10, M.NET_RX_BYTES) not in rows  # nothing used: no row


def test_a_build_counts_its_seconds_in_the_hours_it_ran_and_once_in_the_hour_it_ended() -> None:
    rollup = M.Rollup()
    rollup.build("t1", T0 + 3500, T0 + 3700)
    rows = {(h, r): round(a, 6) for _, h, r, a, _ in rollup.items()}
    assert rows == {(H10, M.BUILD_SECONDS): 100.0, (H11, M.BUILD_SECONDS): 100.0, (H11, M.BUILDS): 1.0}
