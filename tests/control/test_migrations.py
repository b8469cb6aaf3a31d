"""Migrations build the schema the models describe, and undo it cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from control.store import migrate
from control.store.database import Store
from control.store.models import Base


def _tables(db: Store) -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_from_empty_matches_the_models(tmp_path: Path) -> None:
    db = Store(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(db.engine)
    head = ScriptDirectory(str(migrate.MIGRATIONS_DIR)).get_current_head()
    assert migrate.current_revision(db.engine) == head
    assert _tables(db) == set(Base.metadata.tables)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_every_revision_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    db = Store(f"sqlite:///{tmp_path / 'm.db'}")
    revisions = [r.revision for r in ScriptDirectory(str(migrate.MIGRATIONS_DIR)).walk_revisions()]
    migrate.upgrade(db.engine)
    for revision in revisions:  # newest first: step down one at a time, then back up
        migrate.downgrade(db.engine, "-1")
        migrate.upgrade(db.engine, revision)
        migrate.downgrade(db.engine, "-1")
    assert migrate.current_revision(db.engine) is None
    assert _tables(db) == set()
    migrate.upgrade(db.engine)
    assert _tables(db) == set(Base.metadata.tables)
    db.dispose()


def test_data_survives_a_round_trip_of_the_latest_revision(tmp_path: Path) -> None:
    from control.domain.apps import AppService
    from control.domain.tenants import TenantService

    db = Store(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(db.engine)
    tenant = TenantService(db).create("acme")
    AppService(db).create(tenant.id, "web", port=9000)
    migrate.downgrade(db.engine, "-1")
    migrate.upgrade(db.engine)
    assert AppService(db).get(tenant.id, "web").port == 9000
    db.dispose()
