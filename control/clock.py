"""The one clock: aware UTC datetimes everywhere (SQLite keeps no time zone; the store's
column type restores it)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
