"""environments: sandboxed environments (leases, exec) and the warm pool

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=True),
        sa.Column("image", sa.String(length=200), nullable=False),
        sa.Column("release_id", sa.String(length=40), nullable=True),
        sa.Column("with_app_env", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("container_id", sa.String(length=80), nullable=True),
        sa.Column("millicpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=False),
        sa.Column("lifetime_ends_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_environments_app_id_apps"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_environments_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environments")),
    )
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.create_index("ix_environments_tenant", ["tenant_id", "id"], unique=False)
        batch_op.create_index("ix_environments_lease", ["lease_expires_at"], unique=False)
    with op.batch_alter_table("tenant_compute_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_environments", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_compute_limits", schema=None) as batch_op:
        batch_op.drop_column("max_environments")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_index("ix_environments_lease")
        batch_op.drop_index("ix_environments_tenant")
    op.drop_table("environments")
