"""a release keeps the config it was made with: the versions of its env vars (every value a var
has had is kept, sealed) and its database links

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Releases made before this have none: a rollback to one of them runs with the app's
    # config of the day, and says so.
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config", sa.Text(), nullable=True))
    op.create_table(
        "env_var_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("env_var_versions", schema=None) as batch_op:
        batch_op.create_index("ix_env_var_versions_var", ["app_id", "name", "version"], unique=False)
        batch_op.create_index(batch_op.f("ix_env_var_versions_master_key_id"), ["master_key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_env_var_versions_tenant_id"), ["tenant_id"], unique=False)
    # Today's values are each var's current version; earlier ones were never kept. The
    # var's own id names its first kept version (ids are unique across both tables).
    op.execute(
        "INSERT INTO env_var_versions (id, tenant_id, app_id, name, version, ciphertext, master_key_id, secret, created_at) "
        "SELECT id, tenant_id, app_id, name, version, ciphertext, master_key_id, secret, updated_at FROM env_vars"
    )


def downgrade() -> None:
    with op.batch_alter_table("env_var_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_env_var_versions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_env_var_versions_master_key_id"))
        batch_op.drop_index("ix_env_var_versions_var")
    op.drop_table("env_var_versions")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("config")
