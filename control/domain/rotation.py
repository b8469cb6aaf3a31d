"""Master-key rotation over EVERY sealed value in the database (operator tooling, no API).

``SEALED_COLUMNS`` is the one list of places the keyring's blobs are stored. Resealing,
the per-key counts and the retire check all iterate it, so a key is never retired while
some value still needs it. A new sealed column is one entry here, built with the same
AAD function its domain seals with (tests check every ``master_key_id`` column is listed).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from control.domain.databases import password_aad
from control.domain.env import value_aad
from control.domain.snapshot_records import var_aad
from control.security.keyring import KeyringError, ReloadingKeyring
from control.store.database import Store
from control.store.models import DatabaseRow, EnvVarRow, EnvVarVersionRow, SnapshotEnvVarRow
from control.store.repositories.sealed import (
    SealedColumn,
    SealedValue,
    SealedValueRepository,
)

log = structlog.get_logger("moorage.rotation")

SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(
        "env_vars.ciphertext",
        EnvVarRow.id,
        EnvVarRow.ciphertext,
        EnvVarRow.master_key_id,
        owner=(EnvVarRow.tenant_id, EnvVarRow.app_id, EnvVarRow.name),
        aad=value_aad,
        name=EnvVarRow.name,
    ),
    SealedColumn(
        "env_var_versions.ciphertext",
        EnvVarVersionRow.id,
        EnvVarVersionRow.ciphertext,
        EnvVarVersionRow.master_key_id,
        owner=(EnvVarVersionRow.tenant_id, EnvVarVersionRow.app_id, EnvVarVersionRow.name),
        aad=value_aad,
        name=EnvVarVersionRow.name,
    ),
    SealedColumn(
        "databases.password_ciphertext",
        DatabaseRow.id,
        DatabaseRow.password_ciphertext,
        DatabaseRow.master_key_id,
        owner=(DatabaseRow.tenant_id, DatabaseRow.id),
        aad=password_aad,
        name=DatabaseRow.name,
    ),
    SealedColumn(
        "snapshot_env_vars.ciphertext",
        SnapshotEnvVarRow.id,
        SnapshotEnvVarRow.ciphertext,
        SnapshotEnvVarRow.master_key_id,
        owner=(SnapshotEnvVarRow.tenant_id, SnapshotEnvVarRow.snapshot_id, SnapshotEnvVarRow.name),
        aad=var_aad,
        name=SnapshotEnvVarRow.name,
    ),
)


@dataclass(frozen=True, slots=True)
class ResealBatch:
    column: str
    resealed: int
    failed: list[dict[str, str]]  # column, id, name, master_key_id, reason: never a value
    last_id: str | None  # None when there was nothing left to look at


class RotationService:
    def __init__(self, db: Store, keyring: ReloadingKeyring, columns: tuple[SealedColumn, ...] = SEALED_COLUMNS) -> None:
        self.db = db
        self.keyring = keyring
        self.columns = columns

    def usage_by_column(self) -> dict[str, dict[str, int]]:
        with self.db.read() as session:
            return {c.label: SealedValueRepository(session, c).count_by_key() for c in self.columns}

    def key_usage(self) -> dict[str, int]:
        """Sealed values per master key id, over every registered column."""
        totals: dict[str, int] = {}
        for per_key in self.usage_by_column().values():
            for key_id, count in per_key.items():
                totals[key_id] = totals.get(key_id, 0) + count
        return totals

    def reseal_batch(self, column: SealedColumn, *, after_id: str = "", limit: int = 100) -> ResealBatch:
        """Reseal up to ``limit`` values of ``column`` not under the active key. Blobs are
        read and resealed outside any write lock; the write transaction only swaps them
        (compare-and-swap on the old blob), so the API keeps serving between and during
        batches. Values that fail to open are reported and skipped, never rewritten."""
        keyring = self.keyring.current()
        with self.db.read() as session:
            batch = SealedValueRepository(session, column).batch_not_under(keyring.active_id, after_id=after_id, limit=limit)
        failed: list[dict[str, str]] = []
        swaps: list[tuple[SealedValue, bytes, str]] = []
        for value in batch:
            aad = column.aad(*value.owner)
            try:
                plaintext = self.keyring.open(value.ciphertext, aad)
            except KeyringError as exc:
                log.warning(
                    "sealed_value_unreadable",
                    column=column.label,
                    id=value.id,
                    master_key_id=value.master_key_id,
                    reason=exc.reason,
                )
                failed.append(
                    {
                        "column": column.label,
                        "id": value.id,
                        "name": value.name,
                        "master_key_id": value.master_key_id,
                        "reason": exc.reason,
                    }
                )
                continue
            sealed = keyring.seal(plaintext, aad)
            swaps.append((value, sealed.blob, sealed.key_id))
        resealed = 0
        if swaps:
            with self.db.write() as session:
                repo = SealedValueRepository(session, column)
                resealed = sum(repo.reseal(value, ciphertext=blob, master_key_id=key_id) for value, blob, key_id in swaps)
        return ResealBatch(column.label, resealed, failed, batch[-1].id if batch else None)
