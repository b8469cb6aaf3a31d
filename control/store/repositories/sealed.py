"""Sealed values as stored, whatever table holds them: for master-key rotation only
(operator tooling, across all tenants, no API).

A ``SealedColumn`` names where one kind of sealed value lives (its row id, blob and
``master_key_id`` columns, and the columns its AAD is built from); the repository's
queries are the same for every one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import QueryableAttribute, Session


@dataclass(frozen=True, slots=True)
class SealedColumn:
    label: str  # "table.column": how reports and counts name it
    id: QueryableAttribute[str]
    ciphertext: QueryableAttribute[bytes]
    master_key_id: QueryableAttribute[str]
    owner: tuple[QueryableAttribute[str], ...]  # passed to ``aad`` in this order
    aad: Callable[..., bytes]  # the SAME builder the owning domain seals with
    name: QueryableAttribute[str]  # a non-secret label for failure reports (the id column if none)


@dataclass(frozen=True, slots=True)
class SealedValue:
    id: str
    name: str
    master_key_id: str
    owner: tuple[str, ...]
    ciphertext: bytes = field(repr=False)


class SealedValueRepository:
    def __init__(self, session: Session, column: SealedColumn) -> None:
        self.session = session
        self.column = column

    def count_by_key(self) -> dict[str, int]:
        key = self.column.master_key_id
        return {key_id: int(n) for key_id, n in self.session.execute(select(key, func.count()).group_by(key))}

    def batch_not_under(self, key_id: str, *, after_id: str, limit: int) -> list[SealedValue]:
        c = self.column
        query = (
            select(c.id, c.name, c.master_key_id, c.ciphertext, *c.owner)
            .where(c.master_key_id != key_id, c.id > after_id)
            .order_by(c.id)
            .limit(limit)
        )
        return [SealedValue(row[0], row[1], row[2], tuple(row[4:]), row[3]) for row in self.session.execute(query)]

    def reseal(self, value: SealedValue, *, ciphertext: bytes, master_key_id: str) -> bool:
        """Swap the blob only if nobody changed it since it was read. The value itself did
        not change, so a row's ``updated_at`` (where it has one) is kept as it was."""
        c = self.column
        model = c.id.class_
        values: dict[str, object] = {c.ciphertext.key: ciphertext, c.master_key_id.key: master_key_id}
        if hasattr(model, "updated_at"):
            values["updated_at"] = model.updated_at  # SET updated_at = updated_at: no onupdate
        result = self.session.execute(update(model).where(c.id == value.id, c.ciphertext == value.ciphertext).values(values))
        return bool(result.rowcount)  # type: ignore[attr-defined]
