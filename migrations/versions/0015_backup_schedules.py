"""managed databases back themselves up on a cron schedule; each backup says what started it

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backup_schedule", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("next_backup_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("backups_skipped", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_backup_skip_reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_databases_backup_due", ["status", "next_backup_at"], unique=False)
    with op.batch_alter_table("database_backups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trigger", sa.String(length=16), nullable=False, server_default="manual"))


def downgrade() -> None:
    with op.batch_alter_table("database_backups", schema=None) as batch_op:
        batch_op.drop_column("trigger")
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_index("ix_databases_backup_due")
        batch_op.drop_column("last_backup_skip_reason")
        batch_op.drop_column("backups_skipped")
        batch_op.drop_column("next_backup_at")
        batch_op.drop_column("backup_schedule")
