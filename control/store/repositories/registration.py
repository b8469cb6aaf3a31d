"""Registration tokens, recovery codes and failed recoveries, as stored."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from control.domain.records import Page
from control.domain.registration_records import DefaultLimits, RecoveryAttempts, RegistrationToken
from control.store.models import RecoveryAttemptsRow, RecoveryCodeRow, RegistrationTokenRow
from control.store.repositories.paging import paginate


def to_token(row: RegistrationTokenRow) -> RegistrationToken:
    return RegistrationToken(
        id=row.id,
        name=row.name,
        secret_hash=row.secret_hash,
        uses=row.uses,
        used=row.used,
        approval=row.approval,
        default_limits=DefaultLimits.from_json(json.loads(row.default_limits or "{}")),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class RegistrationTokenRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        *,
        id: str,
        name: str,
        secret_hash: str,
        uses: int,
        approval: bool,
        default_limits: DefaultLimits,
        created_by: str | None,
        expires_at: datetime | None,
    ) -> RegistrationToken:
        row = RegistrationTokenRow(
            id=id,
            name=name,
            secret_hash=secret_hash,
            uses=uses,
            used=0,
            approval=approval,
            default_limits=json.dumps(default_limits.to_json(), sort_keys=True),
            created_by=created_by,
            expires_at=expires_at,
        )
        self.session.add(row)
        self.session.flush()
        return to_token(row)

    def get(self, token_id: str) -> RegistrationToken | None:
        row = self.session.get(RegistrationTokenRow, token_id)
        return None if row is None else to_token(row)

    def list(self, *, limit: int, cursor: str | None) -> Page[RegistrationToken]:
        return paginate(self.session, select(RegistrationTokenRow), RegistrationTokenRow.id, to_token, limit=limit, cursor=cursor)

    def consume(self, token_id: str, now: datetime) -> bool:
        """Spend one use, only if one is left and the token still counts: one statement, so
        two registrations can never both spend the last use (whatever the database)."""
        row = RegistrationTokenRow
        result = self.session.execute(
            update(row)
            .where(
                row.id == token_id,
                row.used < row.uses,
                row.revoked_at.is_(None),
                or_(row.expires_at.is_(None), row.expires_at > now),
            )
            .values(used=row.used + 1)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    def revoke(self, token_id: str, now: datetime) -> RegistrationToken | None:
        row = self.session.get(RegistrationTokenRow, token_id)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = now
            self.session.flush()
        return to_token(row)


class RecoveryRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def code_hash(self, tenant_id: str) -> str | None:
        return self.session.scalar(select(RecoveryCodeRow.code_hash).where(RecoveryCodeRow.tenant_id == tenant_id))

    def set_code(self, tenant_id: str, code_hash: str, now: datetime) -> None:
        row = self.session.get(RecoveryCodeRow, tenant_id)
        if row is None:
            self.session.add(RecoveryCodeRow(tenant_id=tenant_id, code_hash=code_hash, created_at=now))
        else:
            row.code_hash, row.created_at = code_hash, now
        self.session.flush()

    def replace_code(self, tenant_id: str, old_hash: str, new_hash: str, now: datetime) -> bool:
        """Swap the code only if it is still ``old_hash``: a code recovers once, even when two
        recoveries with it race."""
        result = self.session.execute(
            update(RecoveryCodeRow)
            .where(RecoveryCodeRow.tenant_id == tenant_id, RecoveryCodeRow.code_hash == old_hash)
            .values(code_hash=new_hash, created_at=now)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    def attempts(self, tenant_name: str) -> RecoveryAttempts | None:
        row = self.session.get(RecoveryAttemptsRow, tenant_name, with_for_update=True)
        if row is None:
            return None
        return RecoveryAttempts(row.tenant_name, row.failures, row.first_failed_at, row.locked_until)

    def put_attempts(self, attempts: RecoveryAttempts) -> None:
        row = self.session.get(RecoveryAttemptsRow, attempts.tenant_name)
        if row is None:
            row = RecoveryAttemptsRow(tenant_name=attempts.tenant_name)
            self.session.add(row)
        row.failures, row.first_failed_at, row.locked_until = (
            attempts.failures,
            attempts.first_failed_at,
            attempts.locked_until,
        )
        self.session.flush()

    def clear_attempts(self, tenant_name: str) -> None:
        self.session.execute(delete(RecoveryAttemptsRow).where(RecoveryAttemptsRow.tenant_name == tenant_name))

    def purge_attempts(self, failed_before: datetime, now: datetime) -> int:
        """Rows whose failures are all older than ``failed_before`` and that lock nothing now."""
        row = RecoveryAttemptsRow
        result = self.session.execute(
            delete(row).where(row.first_failed_at < failed_before, or_(row.locked_until.is_(None), row.locked_until <= now))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
