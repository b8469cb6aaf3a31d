"""The database handle: one engine, short read and write transactions.

SQLite gets WAL, foreign keys and a busy timeout on every connection. pysqlite's own
transaction handling is switched off so that writes start with ``BEGIN IMMEDIATE``: a
write transaction takes the write lock up front instead of failing half-way with
"database is locked" when two writers race to upgrade their read locks.

SQLite has one writer at a time, and a writer that finds the lock taken sleeps and polls
(1, 2, 5 ... 100 ms apart): under concurrent writes that polling, not the work, sets the
tail latency. So this process's writers queue on a lock of its own first and are handed
the file's lock the moment it is free; other processes (the CLI, a second server) still
meet at SQLite's lock. A writer that waits longer than the busy timeout gets
``DatabaseBusy`` (503 with Retry-After), as it would from SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from control.store import claim_fence

_BEGIN = "moorage_begin"
BUSY_TIMEOUT_S = 10.0


class DatabaseBusy(RuntimeError):
    """Another write held the database longer than the busy timeout."""


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        mode = connection.get_execution_options().get(_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # Private: the file holds key hashes and encrypted secrets.
            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Hands out sessions; each ``with`` block is one unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        writer_bind = self.engine.execution_options(**{_BEGIN: "IMMEDIATE"})
        self._writer = sessionmaker(writer_bind, expire_on_commit=False)
        claim_fence.track_writes(self._writer)
        # Re-entrant: a nested write in one thread meets SQLite's own lock, as before.
        self._write_turn = threading.RLock() if self.engine.dialect.name == "sqlite" else None

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        try:
            with self._turn(), self._writer() as session, session.begin():
                yield session
                claim_fence.stamp(session)  # inside the transaction: the writes and the stamp commit together
        except OperationalError as exc:  # another process held SQLite's lock past the busy timeout
            if getattr(exc.orig, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                raise DatabaseBusy("another process held the database's write lock past the busy timeout") from exc
            raise

    @contextmanager
    def _turn(self) -> Iterator[None]:
        turn = self._write_turn
        if turn is None:
            yield
            return
        if not turn.acquire(timeout=BUSY_TIMEOUT_S):
            raise DatabaseBusy(f"another write held the database for over {BUSY_TIMEOUT_S:.0f} s")
        try:
            yield
        finally:
            turn.release()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
