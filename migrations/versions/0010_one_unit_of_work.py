"""a request's writes and its stored answer commit together: idempotency records no longer track effects

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only a request that crashed under the old code, between its writes and its answer,
    # and whose key no retry took over before the upgrade, still has a list here; a takeover
    # after the upgrade runs it again. Upgrades run with the server stopped, after the lease.
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_column("effects")


def downgrade() -> None:
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("effects", sa.Text(), nullable=True))
