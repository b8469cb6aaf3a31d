"""One request, one unit of work, counted on the real SQLite file with SQLAlchemy's events:
a keyed mutating request makes two write transactions (its Idempotency-Key claim, then its
writes + stored answer + audit row), an unkeyed one makes one, and a write transaction
begins only at the first write."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import event, func, select

from control.api import deployments as deployments_api
from control.settings import Settings
from control.store.models import AppRow, AuditEventRow, IdempotencyRecordRow
from tests.conftest import Caller
from tests.e2e.apps import source, tar_gz


@dataclass
class Transactions:
    """What the engine did, in order: 'write' for each BEGIN IMMEDIATE, 'read' for each
    BEGIN (DEFERRED), 'commit' / 'rollback', plus marks the test adds."""

    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: str) -> None:
        with self.lock:
            self.log.append(entry)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    @property
    def writes(self) -> int:
        return self.log.count("write")

    def open_writes_at(self, mark: str) -> int:
        """Write transactions begun and not yet ended when ``mark`` was logged."""
        open_ = 0
        kind: list[str] = []
        for entry in self.log[: self.log.index(mark)]:
            if entry in ("write", "read"):
                kind.append(entry)
            elif entry in ("commit", "rollback") and kind:
                kind.pop()
            open_ = kind.count("write")
        return open_


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, job_workers=0)  # only the requests write: no worker claims the jobs they queue


@pytest.fixture
def transactions(app: Litestar) -> Iterator[Transactions]:
    engine = app.state.services.db.engine
    seen = Transactions()

    def on_sql(_conn: Any, _cursor: Any, statement: str, *_: object) -> None:
        if statement == "BEGIN IMMEDIATE":
            seen.add("write")
        elif statement == "BEGIN DEFERRED":
            seen.add("read")

    def on_commit(_conn: Any) -> None:
        seen.add("commit")

    def on_rollback(_conn: Any) -> None:
        seen.add("rollback")

    event.listen(engine, "before_cursor_execute", on_sql)
    event.listen(engine, "commit", on_commit)
    event.listen(engine, "rollback", on_rollback)
    yield seen
    event.remove(engine, "before_cursor_execute", on_sql)
    event.remove(engine, "commit", on_commit)
    event.remove(engine, "rollback", on_rollback)


def _count(app: Litestar, model: Any) -> int:
    with app.state.services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


@pytest.fixture
def warm(tenant: Caller) -> Caller:
    """A tenant whose key's last use is fresh: the counts below are the requests' own."""
    assert tenant.get("/v1/apps").status_code == 200
    return tenant


def test_a_keyed_create_makes_two_write_transactions_with_answer_and_audit_in_the_second(
    app: Litestar, warm: Caller, transactions: Transactions
) -> None:
    audit_before = _count(app, AuditEventRow)
    transactions.clear()
    created = warm.post("/v1/apps", json={"name": "web"}, headers=_key())
    assert created.status_code == 201, created.text
    assert transactions.writes == 2, transactions.log
    assert _count(app, AppRow) == 1 and _count(app, AuditEventRow) == audit_before + 1
    with app.state.services.db.read() as session:
        [record] = session.scalars(select(IdempotencyRecordRow))
    assert record.state == "completed" and record.response_status == 201


def test_an_unkeyed_create_makes_one_write_transaction(app: Litestar, warm: Caller, transactions: Transactions) -> None:
    transactions.clear()
    assert warm.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert transactions.writes == 1, transactions.log


@pytest.mark.parametrize("keyed", [True, False])
def test_patching_env_makes_one_write_transaction_after_the_claim(
    app: Litestar, warm: Caller, transactions: Transactions, keyed: bool
) -> None:
    assert warm.post("/v1/apps", json={"name": "web"}).status_code == 201
    transactions.clear()
    headers = _key() if keyed else {}
    patched = warm.patch("/v1/apps/web/env", json={"vars": {"A": "1", "B": "2"}}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert transactions.writes == (2 if keyed else 1), transactions.log


def test_a_read_whose_key_use_is_fresh_writes_nothing(warm: Caller, transactions: Transactions) -> None:
    transactions.clear()
    assert warm.get("/v1/apps").status_code == 200
    assert transactions.writes == 0, transactions.log


def test_a_keyed_upload_is_unpacked_before_any_write_transaction_begins(
    app: Litestar, warm: Caller, transactions: Transactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert warm.post("/v1/apps", json={"name": "web", "port": 8080}).status_code == 201
    unpack = deployments_api.extract_tar_gz

    def watched_unpack(*args: Any, **kwargs: Any) -> Any:
        transactions.add("unpack-start")
        try:
            return unpack(*args, **kwargs)
        finally:
            transactions.add("unpack-end")

    monkeypatch.setattr(deployments_api, "extract_tar_gz", watched_unpack)
    transactions.clear()
    body = tar_gz(source("v1"))
    response = warm.post("/v1/apps/web/deployments", content=body, headers={"Content-Type": "application/gzip", **_key()})
    assert response.status_code == 202, response.text
    assert transactions.writes == 2, transactions.log
    # The claim committed before the body was unpacked; the second began after.
    assert transactions.open_writes_at("unpack-start") == 0, transactions.log
    assert transactions.open_writes_at("unpack-end") == 0, transactions.log
    assert transactions.log.index("unpack-end") < len(transactions.log) - 1 - transactions.log[::-1].index("write")


def test_a_server_error_keeps_the_audit_row_and_frees_the_key_but_undoes_the_handlers_writes(
    app: Litestar, warm: Caller, transactions: Transactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = app.state.services.apps
    create = apps.create

    def create_then_fail(*args: Any, **kwargs: Any) -> Any:
        create(*args, **kwargs)  # the write happened inside the request's unit of work...
        raise RuntimeError("the handler failed after writing")  # ...then the handler failed: 500

    monkeypatch.setattr(apps, "create", create_then_fail)
    audit_before = _count(app, AuditEventRow)
    key = _key()
    failed = warm.post("/v1/apps", json={"name": "web"}, headers=key)
    assert failed.status_code == 500
    assert _count(app, AppRow) == 0  # the handler's write was undone
    assert _count(app, AuditEventRow) == audit_before + 1  # the trail still says it was tried
    assert _count(app, IdempotencyRecordRow) == 0  # the key is free: a retry runs again
    monkeypatch.setattr(apps, "create", create)
    retried = warm.post("/v1/apps", json={"name": "web"}, headers=key)
    assert retried.status_code == 201 and _count(app, AppRow) == 1


def test_a_failed_block_undoes_only_itself(app: Litestar, warm: Caller) -> None:
    """Inside one unit, each write block is a savepoint: a conflict raised in one (409 name
    taken) leaves the unit's other writes, and the answer, to commit."""
    store, apps = app.state.services.db, app.state.services.apps
    with store.unit_of_work() as uow:
        apps.create(warm.tenant_id, "one")
        with pytest.raises(Exception, match="already"):
            apps.create(warm.tenant_id, "one")
        apps.create(warm.tenant_id, "two")
        uow.commit()
    assert sorted(a.name for a in apps.list(warm.tenant_id, limit=10, cursor=None).items) == ["one", "two"]


def test_a_unit_that_is_never_committed_leaves_nothing(app: Litestar, warm: Caller) -> None:
    store, apps = app.state.services.db, app.state.services.apps
    woken: list[str] = []
    with store.unit_of_work():
        apps.create(warm.tenant_id, "ghost")
        assert apps.get(warm.tenant_id, "ghost").name == "ghost"  # the unit reads its own writes
        store.after_commit(lambda: woken.append("after"))
    assert _count(app, AppRow) == 0 and woken == []


def test_what_a_failed_commit_runs_writes_in_a_unit_of_its_own(app: Litestar, warm: Caller) -> None:
    """The Idempotency-Key release runs when a request's commit fails: its write must commit,
    and give the write turn back, instead of joining the unit that just failed."""
    store, apps = app.state.services.db, app.state.services.apps

    def fail(session: Any) -> None:
        raise RuntimeError("the commit fails")

    with store.unit_of_work() as uow:
        apps.create(warm.tenant_id, "undone")
        store.defer_write(fail)
        uow.on_failure(lambda: apps.create(warm.tenant_id, "kept"))
        with pytest.raises(RuntimeError, match="the commit fails"):
            uow.commit()
    assert sorted(a.name for a in apps.list(warm.tenant_id, limit=10, cursor=None).items) == ["kept"]
    apps.create(warm.tenant_id, "later")  # the write turn is free: this does not wait out the busy timeout


def test_a_unit_is_idle_until_something_is_written_deferred_or_awaits_the_commit(app: Litestar, warm: Caller) -> None:
    store = app.state.services.db
    with store.unit_of_work() as uow:
        assert uow.idle  # a read that wrote nothing is settled without a trip to a worker thread
        store.defer_write(lambda session: None)
        assert not uow.idle
    with store.unit_of_work() as uow:
        app.state.services.apps.create(warm.tenant_id, "web")
        assert not uow.idle
    with store.unit_of_work() as uow:
        store.after_commit(lambda: None)
        assert not uow.idle


def test_a_read_whose_key_use_is_due_writes_it_once(app: Litestar, tenant: Caller, transactions: Transactions) -> None:
    transactions.clear()
    assert tenant.get("/v1/apps").status_code == 200  # the key's first use: its last_used_at is due
    assert transactions.writes == 1, transactions.log
    [key] = [k for k in tenant.get("/v1/keys").json()["items"] if k["id"] == tenant.key_id]
    assert key["last_used_at"] is not None
