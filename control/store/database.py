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

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from control.domain.errors import DatabaseBusy, DatabaseInUse
from control.domain.unit_of_work import DeferredWrite
from control.store.unit_of_work import SqlUnitOfWork, current, fence

_BEGIN = "moorage_begin"
BUSY_TIMEOUT_S = 10.0


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
    """Hands out sessions. ``write()`` blocks join the unit of work open in this context
    (a request's), or are one of their own; ``read()`` sees the unit's writes once it has
    made some."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        writer_bind = self.engine.execution_options(**{_BEGIN: "IMMEDIATE"})
        self._writer = sessionmaker(writer_bind, expire_on_commit=False)
        # A plain lock: a request's unit of work may take it in one thread and give it back in another.
        self._write_turn = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        self._sole_lock: TextIO | None = None

    # -- units of work ------------------------------------------------------------------
    @contextmanager
    def unit_of_work(self) -> Iterator[SqlUnitOfWork]:
        """A unit of work for this context; the caller commits it (the HTTP layer does, for a request)."""
        uow = SqlUnitOfWork(self)
        token = current.set(uow)
        try:
            yield uow
        finally:
            current.reset(token)
            uow.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        uow = current.get()
        session = None if uow is None or uow.closed else uow.read_session()
        if session is not None:
            yield session
            return
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A block of writes: a savepoint in the open unit of work, else a unit of its own
        that commits when the block ends (and that nested blocks join)."""
        uow = current.get()
        if uow is not None and not uow.closed:
            with uow.savepoint() as session:
                yield session
            return
        with self.unit_of_work() as own:
            with own.transaction() as session:
                yield session
            own.commit()

    @contextmanager
    def write_now(self) -> Iterator[Session]:
        """A write that commits when the block ends, even inside a request's unit of work:
        for what concurrent requests must see before this one finishes (the Idempotency-Key
        claim). The unit of work must not have written yet: it would hold the write turn."""
        uow = current.get()
        if uow is not None and not uow.closed and uow.began:
            raise RuntimeError("write_now() inside a unit of work that has written would wait on itself")
        token = current.set(None)
        try:
            with self.write() as session:
                yield session
        finally:
            current.reset(token)

    @contextmanager
    def fenced(self, check: DeferredWrite) -> Iterator[None]:
        """Every unit of work that commits in this context runs ``check(session)`` first, in
        its transaction, and commits nothing if it raises: a job's writes are fenced by its lease."""
        token = fence.set(check)
        try:
            yield
        finally:
            fence.reset(token)

    def defer_write(self, write: DeferredWrite) -> None:
        """``write(session)`` at the commit of the open unit of work, or now when none is open."""
        uow = current.get()
        if uow is not None and not uow.closed:
            uow.defer(write)
            return
        with self.write() as session:
            write(session)

    def after_commit(self, action: Callable[[], None]) -> None:
        """``action()`` once the open unit of work commits (never if it is discarded), or now."""
        uow = current.get()
        if uow is not None and not uow.closed:
            uow.after_commit(action)
        else:
            action()

    def on_failure(self, action: Callable[[], object]) -> None:
        """``action()`` if the open unit of work fails to commit, so that nothing it wrote is
        kept (undo what was done outside the database); nothing when none is open: then
        every write so far is committed already."""
        uow = current.get()
        if uow is not None and not uow.closed:
            uow.on_failure(action)

    # -- what a unit of work uses -------------------------------------------------------
    def new_write_session(self) -> Session:
        return self._writer()

    def take_write_turn(self) -> None:
        turn = self._write_turn
        if turn is not None and not turn.acquire(timeout=BUSY_TIMEOUT_S):
            raise DatabaseBusy(f"another write held the database for over {BUSY_TIMEOUT_S:.0f} s")

    def give_write_turn(self) -> None:
        if self._write_turn is not None:
            self._write_turn.release()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def claim_sole_use(self) -> bool:
        """For a server about to serve: on a SQLite file, take the file's server lock (an
        exclusive ``flock`` on ``<file>.server-lock``, which the kernel frees when the process
        dies, however it dies) and return True: this process is then the only server on the
        database, and every lease in it is a dead process's. Raises ``DatabaseInUse`` when a
        live server holds the lock. False where several servers may share the database
        (PostgreSQL): their leases are left to run out."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return False
        if self._sole_lock is not None:
            return True
        path = Path(url.database + ".server-lock")
        handle = open(path, "a+")  # noqa: SIM115 (held open for the life of the process: that is the lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DatabaseInUse(
                f"{holder} is already serving {url.database}. With SQLite one server at a time runs on a "
                "database: stop the other one, or give this one its own MOORAGE_DATA_DIR."
            ) from None
        handle.truncate(0)
        handle.write(f"moorage serve (pid {os.getpid()} on {os.uname().nodename})\n")
        handle.flush()
        self._sole_lock = handle
        return True

    def dispose(self) -> None:
        self.engine.dispose()
        if self._sole_lock is not None:
            self._sole_lock.close()  # closing the file frees the lock
            self._sole_lock = None
