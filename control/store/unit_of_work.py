"""The unit of work on SQLAlchemy (see ``control.domain.unit_of_work`` for the contract).

One session and one write transaction per unit, opened at the first write. Each
``Store.write()`` block inside it is a SAVEPOINT: a block that raises undoes only itself,
as it did when every block was a transaction of its own, and the unit commits once.

The unit holds this process's write turn (``Store``'s writer queue) from its first write
to its end. A request's unit may begin in one worker thread and commit in another, so the
turn is a plain lock, not a thread-owned one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from control.domain.errors import DatabaseBusy
from control.domain.unit_of_work import DeferredWrite

if TYPE_CHECKING:
    from control.store.database import Store

log = structlog.get_logger("moorage.store")

# The unit of work ``write()`` joins in this context: a request's, or the outermost write block's.
current: ContextVar[SqlUnitOfWork | None] = ContextVar("moorage_unit_of_work", default=None)
# What every unit of work committing in this context checks first, inside its transaction
# (a job's lease): a writer that lost its right to write commits nothing.
fence: ContextVar[DeferredWrite | None] = ContextVar("moorage_write_fence", default=None)


def busy_from(exc: OperationalError) -> DatabaseBusy | None:
    if getattr(exc.orig, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
        return DatabaseBusy("another process held the database's write lock past the busy timeout")
    return None


class SqlUnitOfWork:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._session: Session | None = None
        self._deferred: list[DeferredWrite] = []
        self._after_commit: list[Callable[[], None]] = []
        self._on_failure: list[Callable[[], object]] = []
        self._fence = fence.get()
        self.closed = False

    # -- what the store's read() and write() use ----------------------------------------
    @property
    def began(self) -> bool:
        """Has this unit written (and so taken the write turn)?"""
        return self._session is not None

    @property
    def idle(self) -> bool:
        return self._session is None and not self._deferred and not self._after_commit

    def read_session(self) -> Session | None:
        """The unit's session once it has written: reads then see the unit's own writes."""
        return self._session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The unit's session, for the outermost block (no savepoint needed)."""
        session = self._begin()
        with _busy_as_domain_error():
            yield session

    @contextmanager
    def savepoint(self) -> Iterator[Session]:
        session = self._begin()
        with _busy_as_domain_error(), session.begin_nested():
            yield session

    # -- the contract -------------------------------------------------------------------
    def defer(self, write: DeferredWrite) -> None:
        self._deferred.append(write)

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after_commit.append(action)

    def on_failure(self, action: Callable[[], object]) -> None:
        self._on_failure.append(action)

    def discard(self) -> None:
        self._end(commit=False)
        self._after_commit.clear()  # they were for the writes just undone

    def commit(self) -> None:
        try:
            if self._deferred:
                session = self._begin()
                with _busy_as_domain_error():
                    for write in self._deferred:
                        write(session)
            self._deferred.clear()
            if self._fence is not None and self._session is not None:
                with _busy_as_domain_error():
                    self._fence(self._session)
            self._end(commit=True)
        except BaseException:
            self._end(commit=False)
            self._after_commit.clear()
            # Closed first: a failure action that writes (the Idempotency-Key release) then runs in a
            # unit of its own. Joining this dead one took the write turn and never gave it back.
            self.closed = True
            for action in self._on_failure:
                _quietly(action)
            raise
        finally:
            self.closed = True
        for action in self._after_commit:
            _quietly(action)

    def close(self) -> None:
        if not self.closed:
            self._end(commit=False)
            self.closed = True

    # -- inside -------------------------------------------------------------------------
    def _begin(self) -> Session:
        if self.closed:
            raise RuntimeError("this unit of work has ended; a later write needs a unit of its own")
        if self._session is None:
            self._store.take_write_turn()
            try:
                session = self._store.new_write_session()
                session.begin()
            except BaseException:
                self._store.give_write_turn()
                raise
            self._session = session
        return self._session

    def _end(self, *, commit: bool) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            if commit:
                with _busy_as_domain_error():
                    session.commit()
            else:
                session.rollback()
        finally:
            session.close()
            self._store.give_write_turn()


@contextmanager
def _busy_as_domain_error() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:  # another process held SQLite's lock past the busy timeout
        busy = busy_from(exc)
        if busy is None:
            raise
        raise busy from exc


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the writes' fate is settled; a follow-up failing must not change it
        log.warning(
            "unit_of_work_follow_up_failed",
            action=getattr(action, "__qualname__", repr(action)),
            error=f"{type(exc).__name__}: {exc}",
        )
