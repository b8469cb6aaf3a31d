"""managed databases: databases, app links, backups, restores, per-tenant database quotas

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "databases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("backup_retention", sa.Integer(), nullable=True),
        sa.Column("db_user", sa.String(length=63), nullable=False),
        sa.Column("db_name", sa.String(length=63), nullable=False),
        sa.Column("password_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("container_id", sa.String(length=80), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.Column("purge_after", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_databases_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_databases")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_databases_tenant_id")),
    )
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_databases_master_key_id"), ["master_key_id"], unique=False)
        batch_op.create_index("ix_databases_tenant", ["tenant_id", "id"], unique=False)

    op.create_table(
        "tenant_database_limits",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("max_databases", sa.Integer(), nullable=True),
        sa.Column("max_memory_mb", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_database_limits_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_database_limits")),
    )
    op.create_table(
        "database_backups",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("database_id", sa.String(length=40), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("file_name", sa.String(length=200), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["database_id"], ["databases.id"], name=op.f("fk_database_backups_database_id_databases"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_database_backups_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_backups")),
    )
    with op.batch_alter_table("database_backups", schema=None) as batch_op:
        batch_op.create_index("ix_database_backups_database", ["database_id", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_database_backups_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "database_links",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("database_id", sa.String(length=40), nullable=False),
        sa.Column("env_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_database_links_app_id_apps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["database_id"], ["databases.id"], name=op.f("fk_database_links_database_id_databases"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_database_links_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_links")),
        sa.UniqueConstraint("app_id", "env_name", name=op.f("uq_database_links_app_id")),
        sa.UniqueConstraint("database_id", "app_id", name=op.f("uq_database_links_database_id")),
    )
    with op.batch_alter_table("database_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_database_links_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "database_restores",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("backup_id", sa.String(length=40), nullable=False),
        sa.Column("target_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backup_id"],
            ["database_backups.id"],
            name=op.f("fk_database_restores_backup_id_database_backups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["databases.id"], name=op.f("fk_database_restores_target_id_databases"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_database_restores_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_restores")),
    )
    with op.batch_alter_table("database_restores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_database_restores_backup_id"), ["backup_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_database_restores_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("database_restores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_database_restores_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_database_restores_backup_id"))

    op.drop_table("database_restores")
    with op.batch_alter_table("database_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_database_links_tenant_id"))

    op.drop_table("database_links")
    with op.batch_alter_table("database_backups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_database_backups_tenant_id"))
        batch_op.drop_index("ix_database_backups_database")

    op.drop_table("database_backups")
    op.drop_table("tenant_database_limits")
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_index("ix_databases_tenant")
        batch_op.drop_index(batch_op.f("ix_databases_master_key_id"))

    op.drop_table("databases")
