"""The events core against the real store: an event commits with the change it tells of,
seq orders events and is never reused, reads are per tenant, a waiter is woken by a commit,
and a sink runs inside the publishing transaction."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from control.clock import utcnow
from control.domain.events import EventService
from control.domain.records import Event
from control.store.models import EventRow
from tests.conftest import Caller


@pytest.fixture
def events(app) -> EventService:
    return app.state.services.events


def test_events_are_read_in_commit_order_after_a_seq_and_only_the_tenants_own(events: EventService, new_tenant) -> None:
    a, b = new_tenant("ev-a", ["admin"]), new_tenant("ev-b", ["admin"])
    first = events.publish(a.tenant_id, "deployment.queued", "dep_1", {"app": "web"})
    events.publish(b.tenant_id, "deployment.queued", "dep_2")
    second = events.publish(a.tenant_id, "deployment.running", "dep_1", {"app": "web", "release": "v1"})
    assert first.id.startswith("evt_") and first.seq < second.seq
    got = events.list(a.tenant_id)
    assert [(e.type, e.subject, e.data) for e in got] == [
        ("deployment.queued", "dep_1", {"app": "web"}),
        ("deployment.running", "dep_1", {"app": "web", "release": "v1"}),
    ]
    assert [e.seq for e in events.list(a.tenant_id, after=first.seq)] == [second.seq]
    assert [e.type for e in events.list(a.tenant_id, types=["deployment.running"])] == ["deployment.running"]
    assert [e.subject for e in events.list(b.tenant_id)] == ["dep_2"]
    assert events.last_seq(a.tenant_id) == second.seq


def test_an_event_in_a_unit_of_work_that_is_discarded_never_happened(events: EventService, tenant: Caller) -> None:
    with events.db.unit_of_work() as uow:
        events.publish(tenant.tenant_id, "release.created", "rel_1")
        uow.discard()
        uow.commit()
    assert events.list(tenant.tenant_id) == []
    with pytest.raises(RuntimeError), events.db.write():
        events.publish(tenant.tenant_id, "release.created", "rel_2")
        raise RuntimeError("the change failed after its event was written")
    assert events.list(tenant.tenant_id) == []


def test_unknown_types_and_oversized_data_are_a_publishers_bug(events: EventService, tenant: Caller) -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        events.publish(tenant.tenant_id, "deployment.exploded", "dep_1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        events.publish(tenant.tenant_id, "run.failed", "run_1", {"output": "x" * 5000})


def test_a_seq_is_never_given_out_twice_even_after_retention_removed_every_event(events: EventService, tenant: Caller) -> None:
    last = events.publish(tenant.tenant_id, "key.created", "key_1")
    assert events.purge_before(utcnow() + timedelta(seconds=1)) >= 1
    assert events.list(tenant.tenant_id) == []
    after = events.publish(tenant.tenant_id, "key.revoked", "key_1")
    assert after.seq > last.seq  # a client resuming from last.seq still sees it


def test_a_waiter_is_woken_by_the_commit_not_by_its_next_poll(events: EventService, tenant: Caller) -> None:
    start = events.last_seq(tenant.tenant_id)
    got: list[list[Event]] = []
    waited: list[float] = []

    def wait() -> None:
        t0 = time.monotonic()
        got.append(events.wait_for(tenant.tenant_id, after=start, timeout_s=10))
        waited.append(time.monotonic() - t0)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    published = time.monotonic()
    events.publish(tenant.tenant_id, "cron.fired", "cron_1")
    waiter.join(5)
    assert [e.type for e in got[0]] == ["cron.fired"]
    assert waited[0] < 0.3 + (time.monotonic() - published) + 0.5  # well before the 10 s timeout
    assert events.wait_for(tenant.tenant_id, after=got[0][-1].seq, timeout_s=0.2) == []  # nothing new: [] at the timeout


def test_a_waiter_hears_of_an_event_another_process_committed_within_a_poll(events: EventService, tenant: Caller) -> None:
    other = EventService(events.db)  # another process's service: its commits wake none of ours
    start = events.last_seq(tenant.tenant_id)
    timer = threading.Timer(0.2, lambda: other.publish(tenant.tenant_id, "backup.succeeded", "bkp_1"))
    timer.start()
    t0 = time.monotonic()
    found = events.wait_for(tenant.tenant_id, after=start, timeout_s=5)
    assert [e.type for e in found] == ["backup.succeeded"] and time.monotonic() - t0 < 2.5


class Outbox:
    """A sink as the webhook outbox is one: a row of its own in the publishing transaction."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.seen = fail, []

    def on_event(self, session: Session, event: Event) -> None:
        assert session.scalar(select(EventRow.id).where(EventRow.seq == event.seq)) == event.id  # same transaction
        if self.fail:
            raise RuntimeError("the outbox cannot write")
        self.seen.append(event.seq)


def test_a_sink_runs_inside_the_publishing_transaction_and_its_failure_undoes_the_event(
    events: EventService, tenant: Caller
) -> None:
    ok = Outbox()
    published = EventService(events.db, sinks=[ok]).publish(tenant.tenant_id, "domain.active", "dom_1")
    assert ok.seen == [published.seq]
    with pytest.raises(RuntimeError, match="outbox"):
        EventService(events.db, sinks=[Outbox(fail=True)]).publish(tenant.tenant_id, "domain.failed", "dom_2")
    assert [e.type for e in events.list(tenant.tenant_id)] == ["domain.active"]


def test_the_retention_sweep_removes_old_events(app, tenant: Caller) -> None:
    services = app.state.services
    services.events.publish(tenant.tenant_id, "key.created", "key_1")
    with services.db.write() as session:
        session.query(EventRow).update({EventRow.created_at: utcnow() - timedelta(days=8)})
    fresh = services.events.publish(tenant.tenant_id, "key.revoked", "key_1")
    assert services.retention.sweep()["events"] == 1
    assert [e.seq for e in services.events.list(tenant.tenant_id)] == [fresh.seq]
