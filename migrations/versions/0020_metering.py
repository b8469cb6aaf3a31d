"""metering: hourly usage per tenant and resource (CPU, memory, network, block I/O, builds, storage)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metered_usage",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("resource", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("peak", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "hour", "resource", name=op.f("pk_metered_usage")),
    )
    with op.batch_alter_table("metered_usage", schema=None) as batch_op:
        batch_op.create_index("ix_metered_usage_hour", ["hour"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metered_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_metered_usage_hour")
    op.drop_table("metered_usage")
