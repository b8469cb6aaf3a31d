"""snapshots: app snapshots (image, sealed env, links, volume and database data) to fork from

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("app_name", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("release_id", sa.String(length=40), nullable=False),
        sa.Column("release_number", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.String(length=200), nullable=False),
        sa.Column("image_tag", sa.String(length=200), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("links", sa.Text(), nullable=False),
        sa.Column("volumes", sa.Text(), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("paused_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_snapshots_app_id_apps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_snapshots_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_snapshots_app", ["app_id", "id"], unique=False)
        batch_op.create_index("ix_snapshots_tenant", ["tenant_id", "id"], unique=False)

    op.create_table(
        "snapshot_env_vars",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("snapshot_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["snapshots.id"], name=op.f("fk_snapshot_env_vars_snapshot_id_snapshots"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_snapshot_env_vars_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_env_vars")),
        sa.UniqueConstraint("snapshot_id", "name", name=op.f("uq_snapshot_env_vars_snapshot_id")),
    )
    with op.batch_alter_table("snapshot_env_vars", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_snapshot_env_vars_master_key_id"), ["master_key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshot_env_vars_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "snapshot_forks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("snapshot_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_snapshot_forks_app_id_apps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["snapshots.id"], name=op.f("fk_snapshot_forks_snapshot_id_snapshots"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_snapshot_forks_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_forks")),
    )
    with op.batch_alter_table("snapshot_forks", schema=None) as batch_op:
        batch_op.create_index("ix_snapshot_forks_snapshot", ["snapshot_id", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshot_forks_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("tenant_storage_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_snapshot_mb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_storage_limits", schema=None) as batch_op:
        batch_op.drop_column("max_snapshot_mb")
    with op.batch_alter_table("snapshot_forks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshot_forks_tenant_id"))
        batch_op.drop_index("ix_snapshot_forks_snapshot")
    op.drop_table("snapshot_forks")
    with op.batch_alter_table("snapshot_env_vars", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshot_env_vars_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_snapshot_env_vars_master_key_id"))
    op.drop_table("snapshot_env_vars")
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_snapshots_tenant")
        batch_op.drop_index("ix_snapshots_app")
    op.drop_table("snapshots")
