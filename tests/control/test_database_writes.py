"""Write transactions on the real SQLite file: this process's writers take turns on a lock
of their own (instead of polling SQLite's), and a write that cannot get the database within
the busy timeout, from this process or another, is ``DatabaseBusy``: 503, nothing written."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from control.store import database as database_module
from control.store.database import DatabaseBusy, Store
from tests.conftest import Caller

WRITERS, WRITES_EACH = 4, 25  # 4: each keeps a pooled connection (the pool holds 5)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_S", 0.3)
    return 0.3


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    database = Store(f"sqlite:///{tmp_path / 'writes.db'}")
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE marks (writer INTEGER, n INTEGER)")
    yield database
    database.dispose()


def test_writers_in_one_process_take_turns_and_none_is_lost(db: Store) -> None:
    open_writes, most_open = 0, 0
    counting = threading.Lock()

    @event.listens_for(db.engine, "before_cursor_execute")
    def _queued(_conn, _cursor, statement: str, *_: object) -> None:  # type: ignore[no-untyped-def]
        nonlocal open_writes, most_open
        if statement == "BEGIN IMMEDIATE":  # from here a writer waits on (then holds) SQLite's lock
            with counting:
                open_writes += 1
                most_open = max(most_open, open_writes)

    @event.listens_for(db.engine, "commit")
    def _ended(connection) -> None:  # type: ignore[no-untyped-def]
        nonlocal open_writes
        if connection.get_execution_options().get("moorage_begin") == "IMMEDIATE":
            with counting:
                open_writes -= 1

    start = threading.Barrier(WRITERS)

    def writer(number: int) -> None:
        with db.read() as session:  # connect first: a new connection's PRAGMAs queue on SQLite's lock too
            session.execute(text("SELECT 1"))
        start.wait()
        for n in range(WRITES_EACH):
            with db.write() as session:
                session.execute(text("INSERT INTO marks VALUES (:w, :n)"), {"w": number, "n": n})
                time.sleep(0.002)  # a write that takes a moment, as real ones do: the others arrive meanwhile

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with db.read() as session:
        rows = session.execute(text("SELECT count(*), count(DISTINCT writer * 1000 + n) FROM marks")).one()
    assert tuple(rows) == (WRITERS * WRITES_EACH, WRITERS * WRITES_EACH)
    assert most_open == 1  # never two of this process's writers inside SQLite's lock queue at once


def _hold_a_write(db: Store) -> tuple[threading.Event, threading.Thread]:
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write() as session:
            session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: SQLite's write lock (and this process's turn)
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    return release, thread


def test_a_write_held_past_the_busy_timeout_in_this_process_is_busy(short_busy_timeout: float, db: Store) -> None:
    release, holder = _hold_a_write(db)
    try:
        with pytest.raises(DatabaseBusy), db.write() as session:
            session.execute(text("INSERT INTO marks VALUES (1, 1)"))
    finally:
        release.set()
        holder.join(10)
    with db.write() as session:  # the turn was handed back: writes go on
        session.execute(text("INSERT INTO marks VALUES (2, 2)"))
    with db.read() as session:
        assert session.execute(text("SELECT writer FROM marks ORDER BY writer")).scalars().all() == [2]


def test_another_process_holding_the_lock_past_the_busy_timeout_is_busy(short_busy_timeout: float, tmp_path: Path) -> None:
    db = Store(f"sqlite:///{tmp_path / 'shared.db'}")  # made after the patch: SQLite's own timeout is short too
    with db.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE marks (writer INTEGER, n INTEGER)")
    other = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)  # as the CLI or a second server would
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseBusy), db.write() as session:
            session.execute(text("INSERT INTO marks VALUES (1, 1)"))
        other.execute("ROLLBACK")
        with db.write() as session:
            session.execute(text("INSERT INTO marks VALUES (2, 2)"))
    finally:
        other.close()
        db.dispose()


def test_the_api_answers_database_busy_503_and_writes_nothing(short_busy_timeout: float, app, tenant: Caller) -> None:  # type: ignore[no-untyped-def]
    assert tenant.get("/v1/apps").status_code == 200  # the key's last_used_at is fresh: auth writes nothing now
    release, holder = _hold_a_write(app.state.services.db)
    try:
        busy = tenant.post("/v1/apps", json={"name": "blocked"}, headers={"Idempotency-Key": "busy-1"})
    finally:
        release.set()
        holder.join(10)
    assert busy.status_code == 503, busy.text
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert busy.json()["code"] == "database-busy" and busy.headers["Retry-After"] == "1"
    assert tenant.get("/v1/apps").json()["items"] == []
    retried = tenant.post("/v1/apps", json={"name": "blocked"}, headers={"Idempotency-Key": "busy-1"})
    assert retried.status_code == 201, retried.text  # the key was never claimed: the retry runs
