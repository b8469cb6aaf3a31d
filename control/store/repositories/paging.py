"""Keyset pagination over time-ordered ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from control.domain.records import Page

T = TypeVar("T")
# A query narrowed with .where() keeps its row types (where returns Self). The bound is a string
# so that it is never evaluated: only a type checker reads it.
SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")


def paginate(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[str],
    to_record: Callable[[Any], T],
    *,
    limit: int,
    cursor: str | None,
    newest_first: bool = False,
) -> Page[T]:
    if cursor:
        query = query.where(id_column < cursor if newest_first else id_column > cursor)
    order = id_column.desc() if newest_first else id_column
    rows = session.scalars(query.order_by(order).limit(limit + 1)).all()
    items = [to_record(row) for row in rows[:limit]]
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
