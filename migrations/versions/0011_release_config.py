"""a release keeps the config it was made with: its env vars (sealed, as stored) and database links

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Releases made before this have none: a rollback to one of them runs with the app's
    # config of the day, and says so.
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_column('config')
