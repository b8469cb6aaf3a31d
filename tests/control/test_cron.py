"""Cron schedules: what croniter accepts (six fields: leading seconds), the API, and the
scheduler's rules on a clock the test moves (missed firings run at most once, a firing is
skipped while the previous run goes on), then on real time with the runtime port's fake."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from litestar import Litestar

from control.domain.cron import CronService, next_fire, parse_schedule
from control.domain.errors import Invalid
from control.domain.runs import RunStatus
from control.jobs.scheduler import CronScheduler
from control.settings import Settings
from tests.conftest import Caller
from tests.control.deploy_world import Clock
from tests.control.run_world import RunWorld, quiet, run_world

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return quiet(settings, cron_max_per_app=3)


@pytest.fixture
def world(app: Litestar, tenant: Caller) -> Iterator[RunWorld]:
    yield from run_world(app.state.services, tenant)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def cron(world: RunWorld, clock: Clock) -> CronService:
    """The service as the scheduler uses it, on the test's clock."""
    return CronService(world.services.db, world.services.runs.runs, clock=clock)


# -- schedules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("*/2 * * * * *", T0, T0 + timedelta(seconds=2)),  # six fields: seconds first
        ("30 */5 * * * *", T0, T0 + timedelta(seconds=30)),
        ("*/5 * * * *", T0, T0 + timedelta(minutes=5)),
        ("0 3 * * *", T0, T0.replace(day=2, hour=3)),
        ("@hourly", T0, T0 + timedelta(hours=1)),
        ("  0   3 * * * ", T0, T0.replace(day=2, hour=3)),
    ],
)
def test_schedules_come_round_as_cron_says_in_utc(schedule: str, after: datetime, expected: datetime) -> None:
    assert next_fire(parse_schedule(schedule), after) == expected


@pytest.mark.parametrize(
    "schedule", ["", "* * * *", "* * * * * * *", "61 * * * *", "*/0 * * * *", "a b c d e", "0 0 30 2 *", "H * * * *", "@reboot"]
)
def test_a_schedule_croniter_cannot_use_is_refused_naming_the_field(schedule: str) -> None:
    with pytest.raises(Invalid) as refused:
        parse_schedule(schedule)
    assert refused.value.extra["errors"][0]["field"] == "schedule"


# -- the API --------------------------------------------------------------------------------
def test_a_schedule_is_created_read_switched_off_and_on_and_deleted(world: RunWorld) -> None:
    c = world.caller
    made = c.post("/v1/apps/web/cron", json={"name": "nightly", "schedule": "0 3 * * *", "command": ["python", "cleanup.py"]})
    assert made.status_code == 201, made.text
    body = made.json()
    assert made.headers["location"] == f"/v1/apps/{world.app_id}/cron/nightly"
    assert (body["schedule"], body["command"], body["enabled"], body["last_run"], body["skipped"]) == (
        "0 3 * * *",
        ["python", "cleanup.py"],
        True,
        None,
        0,
    )
    assert datetime.fromisoformat(body["next_fire_at"]).hour == 3 and body["runs_url"].endswith("/runs?cron=nightly")
    assert c.get("/v1/apps/web/cron/nightly").json() == body
    assert [s["name"] for s in c.get("/v1/apps/web/cron").json()["items"]] == ["nightly"]
    off = c.patch("/v1/apps/web/cron/nightly", json={"enabled": False}).json()
    assert off["enabled"] is False and off["next_fire_at"] is None
    on = c.patch("/v1/apps/web/cron/nightly", json={"enabled": True, "schedule": "*/10 * * * * *", "timeout_s": 30}).json()
    assert on["enabled"] is True and on["schedule"] == "*/10 * * * * *" and on["timeout_s"] == 30
    assert datetime.fromisoformat(on["next_fire_at"]) - datetime.now(UTC) <= timedelta(seconds=10)
    assert c.delete("/v1/apps/web/cron/nightly").status_code == 204
    assert c.get("/v1/apps/web/cron/nightly").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "schedule": "61 * * * *", "command": ["true"]}, "schedule"),
        ({"name": "x", "schedule": "every day", "command": ["true"]}, "schedule"),
        ({"name": "x", "schedule": "", "command": ["true"]}, "schedule"),
        ({"name": "Not A Label", "schedule": "* * * * *", "command": ["true"]}, "name"),
        ({"name": "x", "schedule": "* * * * *", "command": []}, "command"),
        ({"name": "x", "schedule": "* * * * *", "command": ["true"], "timeout_s": 999999}, "timeout_s"),
        ({"name": "x", "command": ["true"]}, "schedule"),
    ],
)
def test_a_bad_schedule_request_is_422_naming_the_field(world: RunWorld, body: dict[str, object], field: str) -> None:
    response = world.caller.post("/v1/apps/web/cron", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation-failed" and field in str(problem), problem


def test_a_patch_with_a_bad_schedule_is_422_and_changes_nothing(world: RunWorld) -> None:
    world.caller.post("/v1/apps/web/cron", json={"name": "job", "schedule": "* * * * *", "command": ["true"]})
    response = world.caller.patch("/v1/apps/web/cron/job", json={"schedule": "* * *"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "schedule"
    assert world.caller.get("/v1/apps/web/cron/job").json()["schedule"] == "* * * * *"


def test_names_are_unique_per_app_and_an_app_has_at_most_its_quota(world: RunWorld) -> None:
    def make(name: str) -> int:
        return world.caller.post("/v1/apps/web/cron", json={"name": name, "schedule": "@daily", "command": ["true"]}).status_code

    assert [make("a"), make("b"), make("c")] == [201, 201, 201]
    taken = world.caller.post("/v1/apps/web/cron", json={"name": "a", "schedule": "@daily", "command": ["true"]})
    assert taken.status_code == 409 and taken.json()["code"] == "name-taken"
    over = world.caller.post("/v1/apps/web/cron", json={"name": "d", "schedule": "@daily", "command": ["true"]})
    assert over.status_code == 422 and over.json()["code"] == "quota-exceeded"


def test_another_tenants_schedules_are_404(world: RunWorld, new_tenant) -> None:  # type: ignore[no-untyped-def]
    world.caller.post("/v1/apps/web/cron", json={"name": "nightly", "schedule": "@daily", "command": ["true"]})
    other: Caller = new_tenant("other", ["admin"])
    other.post("/v1/apps", json={"name": "web"})
    for method, path in [
        ("GET", "/v1/apps/web/cron/nightly"),
        ("PATCH", "/v1/apps/web/cron/nightly"),
        ("DELETE", "/v1/apps/web/cron/nightly"),
        ("GET", f"/v1/apps/{world.app_id}/cron"),
        ("POST", f"/v1/apps/{world.app_id}/cron"),
    ]:
        body = {"name": "x", "schedule": "@daily", "command": ["true"]} if method == "POST" else {"enabled": False}
        response = other.request(method, path, json=body if method in ("POST", "PATCH") else None)
        assert response.status_code == 404, (method, path, response.text)
    assert world.caller.get("/v1/apps/web/cron/nightly").json()["enabled"] is True


# -- firing, on the test's clock ------------------------------------------------------------
def test_firings_missed_while_the_control_plane_was_down_run_at_most_once(
    world: RunWorld, cron: CronService, clock: Clock
) -> None:
    world.release()
    cron.create(world.tenant_id, "web", name="every-minute", schedule="* * * * *", command=["true"], timeout_s=None)
    assert cron.fire_due() == []  # not due yet (12:01)
    clock.advance(30 * 60 + 15)  # down from 12:00 to 12:30:15: thirty firings missed
    [fired] = cron.fire_due()
    assert fired.name == "every-minute" and fired.run_id is not None
    assert cron.fire_due() == []  # once, not thirty times
    view = cron.get(world.tenant_id, "web", "every-minute")
    assert view.schedule.next_fire_at == T0.replace(minute=31)  # counted from now, not from the missed ones
    assert view.last_run is not None and view.last_run.id == fired.run_id
    history = world.caller.get("/v1/apps/web/runs", params={"cron": "every-minute"}).json()["items"]
    assert [(r["id"], r["trigger"]) for r in history] == [(fired.run_id, "cron:every-minute")]


def test_a_restarted_scheduler_fires_a_missed_firing_once_at_start(world: RunWorld, cron: CronService, clock: Clock) -> None:
    world.release()
    cron.create(world.tenant_id, "web", name="hourly", schedule="@hourly", command=["true"], timeout_s=None)
    clock.advance(5 * 3600)  # the server was down through five firings
    world.scheduler = CronScheduler(cron, interval_s=0.02)
    world.scheduler.start()  # as Services.start does
    deadline = time.monotonic() + 5
    while not world.caller.get("/v1/apps/web/runs").json()["items"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # ten more ticks
    assert len(world.caller.get("/v1/apps/web/runs").json()["items"]) == 1


def test_a_firing_is_skipped_while_the_previous_run_goes_on(world: RunWorld, cron: CronService, clock: Clock) -> None:
    world.release()
    runs = world.services.runs.runs
    cron.create(world.tenant_id, "web", name="sync", schedule="*/2 * * * * *", command=["sleep", "3"], timeout_s=10)
    clock.advance(2)
    [first] = cron.fire_due()
    clock.advance(2)
    [queued] = cron.fire_due()  # the first run has not even started
    assert queued.run_id is None and queued.skipped == f"the previous run {first.run_id} is still queued"
    assert first.run_id is not None
    runs.start(first.run_id)
    clock.advance(2)
    [running] = cron.fire_due()
    assert running.run_id is None and running.skipped == f"the previous run {first.run_id} is still running"
    runs.finish(first.run_id, RunStatus.SUCCEEDED, exit_code=0)
    clock.advance(2)
    [second] = cron.fire_due()
    assert second.run_id not in (None, first.run_id)
    view = world.caller.get("/v1/apps/web/cron/sync").json()
    assert view["skipped"] == 2 and view["last_skip_reason"].endswith("is still running")
    assert view["last_run"]["id"] == second.run_id and view["last_run"]["status"] == "queued"


def test_a_firing_of_an_app_with_no_release_is_skipped_and_says_why(world: RunWorld, cron: CronService, clock: Clock) -> None:
    cron.create(world.tenant_id, "web", name="early", schedule="* * * * *", command=["true"], timeout_s=None)
    clock.advance(61)
    [skipped] = cron.fire_due()
    assert skipped.run_id is None and "no release" in (skipped.skipped or "")
    assert world.caller.get("/v1/apps/web/cron/early").json()["skipped"] == 1


def test_a_suspended_tenants_schedules_are_skipped(world: RunWorld, cron: CronService, clock: Clock, operator: Caller) -> None:
    world.release()
    cron.create(world.tenant_id, "web", name="job", schedule="* * * * *", command=["true"], timeout_s=None)
    assert operator.post(f"/v1/tenants/{world.tenant_id}/suspend").status_code == 200
    clock.advance(61)
    [skipped] = cron.fire_due()
    assert skipped.run_id is None and skipped.skipped == "the tenant is suspended"
    assert operator.post(f"/v1/tenants/{world.tenant_id}/resume").status_code == 200
    clock.advance(60)
    [fired] = cron.fire_due()
    assert fired.run_id is not None


def test_a_switched_off_schedule_never_fires_and_switching_it_on_fires_nothing_missed(
    world: RunWorld, cron: CronService, clock: Clock
) -> None:
    world.release()
    cron.create(world.tenant_id, "web", name="paused", schedule="* * * * *", command=["true"], timeout_s=None)
    cron.update(world.tenant_id, "web", "paused", enabled=False)
    clock.advance(3600)
    assert cron.fire_due() == []
    on = cron.update(world.tenant_id, "web", "paused", enabled=True)
    assert cron.fire_due() == [] and on.schedule.next_fire_at == clock.now.replace(second=0) + timedelta(minutes=1)


# -- firing, on real time -------------------------------------------------------------------
def test_a_two_second_schedule_fires_three_times_within_ten_seconds_never_in_parallel(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(output=["tick"], duration_s=0.2)
    made = world.caller.post("/v1/apps/web/cron", json={"name": "tick", "schedule": "*/2 * * * * *", "command": ["date"]})
    assert made.status_code == 201
    world.start_workers()
    world.start_scheduler(interval_s=0.1)
    started, done = time.monotonic(), []
    while len(done) < 3:
        assert time.monotonic() - started < 10, f"fired {len(done)} time(s) in 10 s"
        history = world.caller.get("/v1/apps/web/runs", params={"cron": "tick"}).json()["items"]
        done = [r for r in history if r["status"] == "succeeded"]
        time.sleep(0.1)
    assert world.runtime.max_parallel_runs == 1
    spans = sorted((r.started_at, r.ended_at) for r in world.runtime.runs if r.ended_at is not None)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert {r["trigger"] for r in done} == {"cron:tick"}
    assert world.caller.get("/v1/apps/web/cron/tick").json()["last_run"]["id"] in {r["id"] for r in history}
