"""Databases backed up on a schedule: the API (create, PATCH, what it refuses), and the
scheduler's rules on a clock the test moves (a due database is backed up once, a firing
while the previous backup runs is skipped, missed firings run at most once, retention keeps
exactly N), with the database jobs run against the stand-in runtime."""

from __future__ import annotations

from datetime import datetime

import pytest
from litestar import Litestar

from control.domain.backups import BackupService
from control.domain.records import Backup
from control.settings import Settings
from control.store.repositories.backups import BackupRepository
from runtime.databases.provision import DatabaseInstance
from tests.conftest import Caller
from tests.control import test_databases as shared
from tests.control.deploy_world import Clock
from tests.control.test_databases import FakeRuntime, create, run_jobs

fake = shared.fake  # the stand-in runtime for the database jobs
EVERY_5_MIN = "*/5 * * * *"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No job workers and no scheduler thread: the test runs jobs and fires schedules itself.
    return settings.with_overrides(job_workers=0, cron_tick_ms=0, database_max_per_tenant=3, database_max_memory_mb=1024)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backups(app: Litestar, clock: Clock) -> BackupService:
    """The service as the scheduler uses it, on the test's clock."""
    real: BackupService = app.state.services.databases.backups
    return BackupService(real.databases, default_retention=real.default_retention, clock=clock)


def listed(tenant: Caller, db: str) -> list[dict[str, object]]:
    r = tenant.get(f"/v1/databases/{db}/backups")
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- the API ----------------------------------------------------------------------------------
def test_a_schedule_is_set_at_create_changed_and_switched_off(app: Litestar, tenant: Caller, fake: FakeRuntime) -> None:
    db = create(tenant, app, name="orders", backup_schedule="0  3 * * *", backup_retention=3)
    assert db["backup_schedule"] == "0 3 * * *" and db["backup_retention"] == 3  # spacing normalised
    assert at(db["next_backup_at"]).hour == 3 and db["backups_skipped"] == 0
    every = tenant.patch("/v1/databases/orders", json={"backup_schedule": EVERY_5_MIN})
    assert every.status_code == 200, every.text
    assert every.json()["backup_schedule"] == EVERY_5_MIN and every.json()["backup_retention"] == 3  # left out: kept
    assert at(every.json()["next_backup_at"]).minute % 5 == 0
    default = tenant.patch("/v1/databases/orders", json={"backup_retention": None}).json()
    assert default["backup_retention"] is None and default["backup_schedule"] == EVERY_5_MIN
    off = tenant.patch("/v1/databases/orders", json={"backup_schedule": None}).json()
    assert off["backup_schedule"] is None and off["next_backup_at"] is None
    assert tenant.get("/v1/databases/orders").json()["backup_schedule"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"backup_schedule": "every night"}, "backup_schedule"),
        ({"backup_schedule": "0 0 30 2 *"}, "backup_schedule"),  # never comes round
        ({"backup_schedule": "*/2 * * * * *"}, "backup_schedule"),  # more often than the platform allows
        ({"backup_retention": 0}, "backup_retention"),
        ({"backup_retention": 101}, "backup_retention"),
    ],
)
def test_a_bad_patch_is_422_naming_the_field_and_changes_nothing(
    app: Litestar, tenant: Caller, fake: FakeRuntime, body: dict[str, object], field: str
) -> None:
    create(tenant, app, name="orders", backup_schedule=EVERY_5_MIN, backup_retention=4)
    r = tenant.patch("/v1/databases/orders", json=body)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    kept = tenant.get("/v1/databases/orders").json()
    assert (kept["backup_schedule"], kept["backup_retention"]) == (EVERY_5_MIN, 4)


def test_a_too_frequent_schedule_is_refused_at_create_saying_the_floor(tenant: Caller) -> None:
    r = tenant.post("/v1/databases", json={"name": "orders", "engine": "postgres", "backup_schedule": "* * * * *"})
    assert r.status_code == 422 and "at most every 300 s" in r.json()["detail"], r.text
    assert tenant.get("/v1/databases/orders").status_code == 404  # nothing was made


def test_unknown_fields_deleted_databases_and_other_tenants(app: Litestar, tenant: Caller, new_tenant, fake: FakeRuntime) -> None:  # type: ignore[no-untyped-def]
    create(tenant, app, name="orders")
    assert tenant.patch("/v1/databases/orders", json={"engine": "redis"}).status_code == 422  # not a field of PATCH
    other: Caller = new_tenant("intruder")
    assert other.patch("/v1/databases/orders", json={"backup_schedule": EVERY_5_MIN}).status_code == 404
    assert tenant.get("/v1/databases/orders").json()["backup_schedule"] is None
    assert tenant.delete("/v1/databases/orders").status_code == 202
    gone = tenant.patch("/v1/databases/orders", json={"backup_schedule": EVERY_5_MIN})
    assert gone.status_code == 409 and gone.json()["code"] == "database-deleted"


# -- the scheduler's rules ------------------------------------------------------------------------
def test_a_due_schedule_backs_up_once_and_counts_the_next_from_now(
    app: Litestar, tenant: Caller, fake: FakeRuntime, backups: BackupService, clock: Clock
) -> None:
    create(tenant, app, name="orders", backup_schedule=EVERY_5_MIN)
    assert backups.fire_due() == []  # not due yet
    clock.advance(60 * 60)  # down for an hour: twelve firings missed
    fired = backups.fire_due()
    assert [(f.name, f.skipped) for f in fired] == [("orders", None)] and fired[0].backup_id
    assert backups.fire_due() == []  # at most once on return
    run_jobs(app)
    [made] = listed(tenant, "orders")
    assert (made["id"], made["trigger"], made["status"]) == (fired[0].backup_id, "schedule", "succeeded")
    nxt = at(tenant.get("/v1/databases/orders").json()["next_backup_at"])
    assert 0 < (nxt - clock.now).total_seconds() <= 300


def test_a_firing_is_skipped_while_the_previous_backup_goes_on(
    app: Litestar, tenant: Caller, fake: FakeRuntime, backups: BackupService, clock: Clock
) -> None:
    create(tenant, app, name="orders", backup_schedule=EVERY_5_MIN)
    manual = tenant.post("/v1/databases/orders/backups").json()  # pending: no worker has run it
    clock.advance(301)
    [skipped] = backups.fire_due()
    assert skipped.backup_id is None and skipped.skipped == f"the previous backup {manual['id']} is still pending"
    body = tenant.get("/v1/databases/orders").json()
    assert body["backups_skipped"] == 1 and body["last_backup_skip_reason"] == skipped.skipped
    run_jobs(app)
    clock.advance(301)
    [fired] = backups.fire_due()
    assert fired.skipped is None and fired.backup_id not in (None, manual["id"])


def test_an_unavailable_or_suspended_tenants_database_is_not_backed_up(
    app: Litestar, tenant: Caller, operator: Caller, fake: FakeRuntime, backups: BackupService, clock: Clock
) -> None:
    create(tenant, name="orders", backup_schedule=EVERY_5_MIN)  # still provisioning: no job has run
    clock.advance(301)
    assert backups.fire_due() == []
    run_jobs(app)
    assert operator.post(f"/v1/tenants/{tenant.tenant_id}/suspend").status_code == 200
    [skipped] = backups.fire_due()
    assert skipped.skipped == "the tenant is suspended"
    with app.state.services.db.read() as session:
        assert BackupRepository(session, None).unfinished(skipped.database_id) is None


def test_scheduled_backups_keep_exactly_the_newest_n(
    app: Litestar, tenant: Caller, fake: FakeRuntime, backups: BackupService, clock: Clock
) -> None:
    db = create(tenant, app, name="orders", backup_schedule=EVERY_5_MIN, backup_retention=3)
    made = []
    for _ in range(7):
        clock.advance(301)
        [fired] = backups.fire_due()
        made.append(fired.backup_id)
        run_jobs(app)
    kept = listed(tenant, "orders")
    assert [b["id"] for b in kept] == made[-3:] and {b["trigger"] for b in kept} == {"schedule"}
    folder = app.state.services.settings.data_dir / "backups" / tenant.tenant_id / db["id"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".dump") == sorted(f"{i}.dump" for i in made[-3:])


def test_failed_backups_are_trimmed_to_the_newest_n_too(
    app: Litestar,
    tenant: Caller,
    fake: FakeRuntime,
    backups: BackupService,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create(tenant, app, name="orders", backup_schedule=EVERY_5_MIN, backup_retention=2)
    good = tenant.post("/v1/databases/orders/backups").json()
    run_jobs(app)

    def full_disk(instance: DatabaseInstance, creds: object, dest_dir: object, *, stem: str) -> Backup:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fake.fake_backups, "backup", full_disk)
    failed = []
    for _ in range(5):
        clock.advance(301)
        [fired] = backups.fire_due()
        failed.append(fired.backup_id)
        run_jobs(app)
    rows = listed(tenant, "orders")
    assert [(b["id"], b["status"]) for b in rows] == [
        (good["id"], "succeeded"),
        (failed[-2], "failed"),
        (failed[-1], "failed"),
    ]
    assert "No space left on device" in str(rows[-1]["reason"])
