"""The unit of work, as the layers above the store see it.

A request is one unit of work: every write its handler makes, the answer kept for its
Idempotency-Key and its audit row commit together, once, or not at all. Services do not
pass it around: the store's ``write()`` joins the unit of work that is open in the current
context (each ``with`` block a savepoint inside it), so a service reads the same whether a
request, a job or a test calls it. The HTTP layer opens one per request and settles it when
the answer is known; outside a request each ``write()`` block is a unit of work of its own.

The write transaction begins at the first write, not when the unit opens: reading and
unpacking an upload never holds the database's writer lock.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

# A write that belongs to the unit of work but need not run, or lock anything, until it
# commits; it gets the unit's SQLAlchemy session.
DeferredWrite = Callable[[Any], None]


class UnitOfWork(Protocol):
    @property
    def idle(self) -> bool:
        """Nothing written, deferred or waiting for the commit: committing does no I/O."""
        ...

    def defer(self, write: DeferredWrite) -> None:
        """Run ``write`` inside this unit's transaction just before it commits; a discard
        keeps it (the audit row and the key's last use are written whatever the outcome)."""

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the writes are committed (wake a worker, remove a file); never
        if they are discarded."""

    def on_failure(self, action: Callable[[], object]) -> None:
        """Run ``action`` when the commit itself fails and nothing was written."""

    def discard(self) -> None:
        """Roll back every write made so far; deferred writes still run at commit."""

    def commit(self) -> None:
        """Run the deferred writes and commit; raises ``DatabaseBusy`` or ``LeaseLost``
        (then nothing at all was written)."""

    def close(self) -> None:
        """End the unit; writes not committed are rolled back."""


@runtime_checkable  # handlers take it as a dependency, which Litestar checks at run time
class Transactions(Protocol):
    """What opens units of work: the store."""

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """Open a unit of work for the current context; ``write()`` calls join it until it
        is committed or closed."""

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
