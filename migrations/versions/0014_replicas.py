"""apps run a number of replicas; an app's runtime row lists every container of its release

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replicas", sa.Integer(), nullable=False, server_default="1"))
    # None: the one container named by container_id/container_name (rows made before replicas).
    with op.batch_alter_table("app_runtimes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("containers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_runtimes", schema=None) as batch_op:
        batch_op.drop_column("containers")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("replicas")
