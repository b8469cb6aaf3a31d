"""previews: preview deployments of apps (an app row of kind "preview", its parent and its expiry)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="app"))
        batch_op.add_column(sa.Column("parent_app_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_apps_parent_app_id_apps"), "apps", ["parent_app_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_index(batch_op.f("ix_apps_parent_app_id"), ["parent_app_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_apps_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apps_expires_at"))
        batch_op.drop_index(batch_op.f("ix_apps_parent_app_id"))
        batch_op.drop_constraint(batch_op.f("fk_apps_parent_app_id_apps"), type_="foreignkey")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("parent_app_id")
        batch_op.drop_column("kind")
