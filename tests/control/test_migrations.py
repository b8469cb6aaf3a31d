"""Migrations build the schema the models describe, and undo it cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

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


def test_every_upgrade_keeps_the_rows_that_reference_a_rebuilt_table(tmp_path: Path) -> None:
    """SQLite rebuilds a table to alter it (copy, drop, rename). With foreign keys on, the drop
    would delete every row referencing it through ON DELETE CASCADE: an upgrade that rebuilt
    ``apps`` once took every release with it. From the first revision with releases, each
    step up keeps an app's release, and leaves foreign keys on."""
    revisions = [r.revision for r in ScriptDirectory(str(migrate.MIGRATIONS_DIR)).walk_revisions()][::-1]
    db = Store(f"sqlite:///{tmp_path / 'm.db'}")
    seeded = False
    for revision in revisions:
        migrate.upgrade(db.engine, revision)
        if not seeded and "releases" in inspect(db.engine).get_table_names():
            with db.engine.begin() as connection:
                _insert(connection, "tenants", id="ten_1", name="acme")
                _insert(connection, "apps", id="app_1", tenant_id="ten_1", name="web")
                _insert(connection, "releases", id="rel_1", tenant_id="ten_1", app_id="app_1")
            seeded = True
            continue
        if seeded:
            with db.engine.connect() as connection:
                kept = connection.execute(text("SELECT count(*) FROM releases WHERE app_id = 'app_1'")).scalar()
                foreign_keys = connection.execute(text("PRAGMA foreign_keys")).scalar()
            assert kept == 1, f"upgrading to {revision} deleted the app's release"
            assert foreign_keys == 1, f"upgrading to {revision} left foreign keys off on a pooled connection"
    assert seeded
    db.dispose()


def _insert(connection: Connection, table: str, **values: object) -> None:
    """A row with ``values``, and a plain value in every other column that needs one."""
    filler = {"INTEGER": 1, "BIGINT": 1, "BOOLEAN": 0, "FLOAT": 0.0, "DATETIME": "2026-01-01 00:00:00"}
    for column in inspect(connection).get_columns(table):
        if column["name"] in values or column["nullable"] or column.get("default") is not None:
            continue
        values[column["name"]] = filler.get(str(column["type"]).split("(")[0].upper(), "x")
    names = ", ".join(values)
    connection.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)
