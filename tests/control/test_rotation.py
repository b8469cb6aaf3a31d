"""Master-key rotation through the real CLI, against the database a running app serves."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from control.bootstrap import bootstrap
from control.cli.main import main
from control.domain.apps import AppService
from control.domain.env import EnvValue
from control.domain.rotation import SEALED_COLUMNS, RotationService
from control.domain.tenants import TenantService
from control.security.master_keys import generate_master_key, parse_keys, write_key_file
from control.settings import Settings
from control.store import migrate
from control.store.models import Base, DatabaseRow, EnvVarRow
from tests.conftest import Caller
from tests.control.test_problems import assert_problem

ENV = "/v1/apps/web/env"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(job_workers=0)  # database rows only: no provisioning against Docker


@pytest.fixture
def data_dir(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI reads MOORAGE_* like a real operator shell, pointed at the app's data dir."""
    monkeypatch.setenv("MOORAGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("MOORAGE_MASTER_KEYS", raising=False)
    monkeypatch.delenv("MOORAGE_MASTER_KEY_FILE", raising=False)
    return settings.data_dir


@pytest.fixture
def web(tenant: Caller, data_dir: Path) -> Caller:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    values = {f"VAR_{i:02d}": f"value-{i}-ü" for i in range(20)}
    assert tenant.request("PUT", ENV, json={"vars": values}).status_code == 200
    return tenant


def revealed(caller: Caller) -> dict[str, str]:
    response = caller.get(ENV, params={"reveal": "true"})
    assert response.status_code == 200, response.text
    return {v["name"]: v["value"] for v in response.json()["vars"]}


def key_ids(data_dir: Path) -> list[str]:
    return [k.id for k in parse_keys((data_dir / "master.keys").read_text(), origin="test")]


def rows_per_key(app) -> dict[str, int]:
    with app.state.services.db.read() as session:
        query = select(EnvVarRow.master_key_id, func.count()).group_by(EnvVarRow.master_key_id)
        return dict(session.execute(query).all())


def cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["admin", *argv])
    captured = capsys.readouterr()
    stream = captured.out if code in (0, 1) and captured.out.strip() else captured.err
    return code, json.loads(stream.strip().splitlines()[-1])


def test_rotation_reseals_everything_while_the_app_keeps_serving(app, web: Caller, data_dir: Path, capsys) -> None:
    before = revealed(web)
    [old] = key_ids(data_dir)
    assert rows_per_key(app) == {old: 20}

    reads: list[dict[str, str]] = []
    done = threading.Event()

    def rotate() -> None:
        try:
            assert main(["admin", "rotate-key", "--batch-size", "2"]) == 0
        finally:
            done.set()

    rotation = threading.Thread(target=rotate)
    rotation.start()
    while not done.is_set() and len(reads) < 60:  # stay well inside the per-key rate limit
        reads.append(revealed(web))  # served from rows under the old key, the new, or both
    rotation.join()
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    progress = [json.loads(line) for line in err.splitlines() if line.startswith('{"batch"')]

    new = summary["active_key"]
    assert key_ids(data_dir) == [new, old] and summary["added_key"] == new
    # Each var twice: its current value and the kept version releases name.
    assert summary["resealed"] == 40 and summary["failed"] == [] and summary["retirable"] == [old]
    assert [p["batch"] for p in progress] == list(range(1, 21)) and progress[-1]["resealed"] == 40
    assert all(read == before for read in reads)
    assert rows_per_key(app) == {new: 20}  # every row, by the column rotation queries use
    assert revealed(web) == before  # the running app picked the new key up without a restart
    web.request("PUT", f"{ENV}/LATER", json={"value": "after rotation"})
    assert rows_per_key(app) == {new: 21}  # and seals new values under it

    code, retired = cli(capsys, "retire-key", old)
    assert code == 0 and retired["retired"] == old
    assert key_ids(data_dir) == [new]
    assert stat.S_IMODE((data_dir / "master.keys").stat().st_mode) == 0o600
    assert revealed(web) == {**before, "LATER": "after rotation"}


def test_retirement_is_refused_while_any_value_uses_the_key(app, web: Caller, data_dir: Path, capsys) -> None:
    [old] = key_ids(data_dir)
    code, refused = cli(capsys, "retire-key", old)
    assert (code, refused["error"]) == (3, "key-active")

    with app.state.services.db.write() as session:  # one value altered on disk
        row = session.scalars(select(EnvVarRow).where(EnvVarRow.name == "VAR_07")).one()
        session.execute(
            update(EnvVarRow)
            .where(EnvVarRow.id == row.id)
            .values(ciphertext=row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1]))
        )
    code, summary = cli(capsys, "rotate-key")
    assert code == 1 and summary["resealed"] == 39  # the var's kept version was not altered
    assert [(f["name"], f["reason"]) for f in summary["failed"]] == [("VAR_07", "authentication-failed")]
    assert "value" not in json.dumps(summary["failed"])
    new = summary["active_key"]
    assert summary["retirable"] == [] and summary["values_per_key"] == {new: 39, old: 1}

    code, refused = cli(capsys, "rotate-key", "--retire", old)
    assert (code, refused["error"]) == (3, "key-in-use") and "1 value" in refused["detail"]
    assert key_ids(data_dir) == [new, old]

    assert web.request("PUT", f"{ENV}/VAR_07", json={"value": "set again"}).status_code == 200  # the repair
    code, summary = cli(capsys, "rotate-key", "--reencrypt-only")
    assert code == 0 and summary["resealed"] == 0 and summary["added_key"] is None and summary["retirable"] == [old]
    assert cli(capsys, "retire-key", old)[0] == 0
    assert revealed(web)["VAR_07"] == "set again"
    code, missing = cli(capsys, "retire-key", old)
    assert (code, missing["error"]) == (1, "key-not-found")


def test_rotation_to_a_key_from_a_file(web: Caller, data_dir: Path, capsys, tmp_path: Path) -> None:
    new_file = tmp_path / "next.keys"
    code, generated = cli(capsys, "generate-master-key", "--id", "next-2027", "--output-file", str(new_file))
    assert code == 0 and generated == {"key_id": "next-2027", "written_to": str(new_file)}
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert cli(capsys, "generate-master-key", "--output-file", str(new_file))[1]["error"] == "file-exists"

    code, summary = cli(capsys, "rotate-key", "--new-key-file", str(new_file), "--batch-size", "50")
    assert code == 0 and summary["active_key"] == "next-2027" and summary["resealed"] == 40
    code, again = cli(capsys, "rotate-key", "--new-key-file", str(new_file))
    assert (code, again["error"]) == (3, "key-exists")
    code, usage = cli(capsys, "master-keys")
    assert usage["keys"][0] == {"id": "next-2027", "active": True, "values": 40}
    assert usage["keys"][1]["values"] == 0 and usage["values_under_unknown_keys"] == {}
    assert cli(capsys, "rotate-key", "--new-key-file", str(tmp_path / "absent"))[1]["error"] == "file-not-found"
    assert cli(capsys, "rotate-key", "--batch-size", "0")[1]["error"] == "usage"


def test_an_unreadable_key_file_stops_the_commands(data_dir: Path, capsys) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "master.keys").write_text("not a key\n")
    for command in (["rotate-key"], ["master-keys"], ["retire-key", "x"]):
        code, refused = cli(capsys, *command)
        assert (code, refused["error"]) == (1, "master-keys-unusable") and "KEY_ID:BASE64" in refused["detail"]


def test_generated_keys_print_once_and_ids_are_checked(capsys) -> None:
    code, printed = cli(capsys, "generate-master-key")
    assert code == 0 and parse_keys(printed["line"], origin="cli")[0].id == printed["key_id"]
    code, refused = cli(capsys, "generate-master-key", "--id", "no spaces")
    assert (code, refused["error"]) == (2, "invalid-key-id")


def test_keys_from_the_environment_rotate_with_reencrypt_only(data_dir: Path, monkeypatch, capsys) -> None:
    first, second = generate_master_key("env-1"), generate_master_key("env-2")
    monkeypatch.setenv("MOORAGE_MASTER_KEYS", first.line())
    services = bootstrap(Settings.from_env())
    migrate.upgrade(services.db.engine)
    tenant = TenantService(services.db).create("envkeys")
    app = AppService(services.db).create(tenant.id, "web")
    services.env_vars.replace(tenant.id, "web", {"A": EnvValue("a"), "B": EnvValue("b")})
    services.db.dispose()

    code, refused = cli(capsys, "rotate-key")
    assert (code, refused["error"]) == (2, "keys-from-environment")
    monkeypatch.setenv("MOORAGE_MASTER_KEYS", f"{second.line()},{first.line()}")  # the operator's restart
    code, summary = cli(capsys, "rotate-key", "--reencrypt-only")
    assert code == 0 and summary["resealed"] == 4 and summary["retirable"] == ["env-1"]
    code, retired = cli(capsys, "retire-key", "env-1")
    assert code == 0 and retired["removed_from"] is None and "MOORAGE_MASTER_KEYS" in retired["note"]

    monkeypatch.setenv("MOORAGE_MASTER_KEYS", second.line())  # env-1 gone: everything still opens
    services = bootstrap(Settings.from_env())
    assert services.env_vars.resolve(tenant.id, app.id) == {"A": "a", "B": "b"}
    services.db.dispose()
    assert not (data_dir / "master.keys").exists()  # keys from the environment never touch the disk


def test_an_app_missing_the_new_key_fails_closed(app, web: Caller, data_dir: Path, capsys, tmp_path: Path) -> None:
    """A second server still configured with only the old key file gets 503, not garbage."""
    old_file = tmp_path / "old.keys"
    old_file.write_text((data_dir / "master.keys").read_text())
    assert cli(capsys, "rotate-key")[0] == 0
    stale = bootstrap(Settings(data_dir=data_dir, master_key_file=old_file))
    with pytest.raises(Exception, match="does not hold"):
        stale.env_vars.resolve(web.tenant_id, web.get("/v1/apps/web").json()["id"])
    stale.db.dispose()
    assert_problem(web.get("/v1/apps/nope/env"), 404, "not-found")


# --- every sealed column, not only env vars ----------------------------------------------
ENV_COLUMN, VERSIONS_COLUMN, DB_COLUMN = "env_vars.ciphertext", "env_var_versions.ciphertext", "databases.password_ciphertext"
SNAPSHOT_COLUMN = "snapshot_env_vars.ciphertext"  # none here: no snapshot is taken


def database_urls(app, tenant_id: str) -> dict[str, str]:
    """Each database's connection URL, as the domain opens it (it holds the password)."""
    service = app.state.services.databases.databases
    return {name: service.connection(tenant_id, name)[1] for name in ("orders", "cache")}


@pytest.fixture
def databases(app, web: Caller) -> Caller:
    service = app.state.services.databases.databases
    service.create(web.tenant_id, "orders", "postgres")
    service.create(web.tenant_id, "cache", "redis")
    return web


def db_rows_per_key(app) -> dict[str, int]:
    with app.state.services.db.read() as session:
        query = select(DatabaseRow.master_key_id, func.count()).group_by(DatabaseRow.master_key_id)
        return dict(session.execute(query).all())


def test_rotation_reseals_database_credentials_too(app, databases: Caller, data_dir: Path, capsys) -> None:
    [old] = key_ids(data_dir)
    env_before, urls_before = revealed(databases), database_urls(app, databases.tenant_id)
    with app.state.services.db.read() as session:
        stamps = dict(session.execute(select(DatabaseRow.id, DatabaseRow.updated_at)).all())

    code, usage = cli(capsys, "master-keys")
    assert code == 0 and usage["keys"] == [{"id": old, "active": True, "values": 42}]
    assert usage["values_per_column"] == {
        ENV_COLUMN: {old: 20},
        VERSIONS_COLUMN: {old: 20},
        DB_COLUMN: {old: 2},
        SNAPSHOT_COLUMN: {},
    }

    assert main(["admin", "rotate-key", "--batch-size", "3"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    progress = [json.loads(line) for line in err.splitlines() if line.startswith('{"batch"')]
    new = summary["active_key"]
    assert summary["resealed"] == 42 and summary["failed"] == [] and summary["retirable"] == [old]
    assert summary["values_per_key"] == {new: 42}
    assert summary["values_per_column"] == {
        ENV_COLUMN: {new: 20},
        VERSIONS_COLUMN: {new: 20},
        DB_COLUMN: {new: 2},
        SNAPSHOT_COLUMN: {},
    }
    assert [p["column"] for p in progress] == [ENV_COLUMN] * 7 + [VERSIONS_COLUMN] * 7 + [DB_COLUMN]  # 20 = 6x3 + 2; then 2
    assert rows_per_key(app) == {new: 20} and db_rows_per_key(app) == {new: 2}

    assert cli(capsys, "retire-key", old)[0] == 0  # old key gone: every value must open without it
    assert revealed(databases) == env_before
    assert database_urls(app, databases.tenant_id) == urls_before
    with app.state.services.db.read() as session:  # the password did not change, so neither did the row
        assert dict(session.execute(select(DatabaseRow.id, DatabaseRow.updated_at)).all()) == stamps
        assert all(
            not blob.startswith(bytes([1, len(old)]) + old.encode())
            for blob in session.scalars(select(DatabaseRow.password_ciphertext))
        )


def test_retirement_is_refused_while_only_a_database_password_uses_the_key(
    app, databases: Caller, data_dir: Path, capsys
) -> None:
    [old] = key_ids(data_dir)
    urls = database_urls(app, databases.tenant_id)
    new = generate_master_key("next")
    write_key_file(data_dir / "master.keys", [new, *parse_keys((data_dir / "master.keys").read_text(), origin="test")])
    services = app.state.services
    env_only = RotationService(
        services.db, services.keyring, tuple(c for c in SEALED_COLUMNS if c.label in (ENV_COLUMN, VERSIONS_COLUMN))
    )
    for column in env_only.columns:  # what rotation used to cover: env values only
        env_only.reseal_batch(column, limit=100)
    assert rows_per_key(app) == {"next": 20} and db_rows_per_key(app) == {old: 2}

    code, refused = cli(capsys, "retire-key", old)
    assert (code, refused["error"]) == (3, "key-in-use")
    assert "2 value(s)" in refused["detail"] and f"{DB_COLUMN}: 2" in refused["detail"] and ENV_COLUMN not in refused["detail"]
    assert key_ids(data_dir) == ["next", old]
    code, usage = cli(capsys, "master-keys")
    assert usage["keys"] == [{"id": "next", "active": True, "values": 40}, {"id": old, "active": False, "values": 2}]

    code, summary = cli(capsys, "rotate-key", "--reencrypt-only")
    assert code == 0 and summary["resealed"] == 2 and summary["retirable"] == [old]
    assert cli(capsys, "retire-key", old)[0] == 0 and key_ids(data_dir) == ["next"]
    assert database_urls(app, databases.tenant_id) == urls


def test_an_altered_database_password_is_reported_never_rewritten(app, databases: Caller, data_dir: Path, capsys) -> None:
    with app.state.services.db.write() as session:
        row = session.scalars(select(DatabaseRow).where(DatabaseRow.name == "cache")).one()
        altered = row.password_ciphertext[:-1] + bytes([row.password_ciphertext[-1] ^ 1])
        row.password_ciphertext = altered
    code, summary = cli(capsys, "rotate-key")
    assert code == 1 and summary["resealed"] == 41  # 20 env vars, their 20 kept versions, the other password
    [failure] = summary["failed"]
    assert (failure["column"], failure["name"], failure["reason"]) == (DB_COLUMN, "cache", "authentication-failed")
    with app.state.services.db.read() as session:
        assert session.scalars(select(DatabaseRow.password_ciphertext).where(DatabaseRow.name == "cache")).one() == altered


def test_every_master_key_id_column_is_a_registered_sealed_column() -> None:
    """The next table that stores sealed values must join SEALED_COLUMNS, or rotation and
    retire-key would not see it."""
    registered = {(c.master_key_id.table.name, c.ciphertext.key) for c in SEALED_COLUMNS}
    tables = {name for name, table in Base.metadata.tables.items() if "master_key_id" in table.c}
    assert {name for name, _ in registered} == tables
    for column in SEALED_COLUMNS:  # blob and key id in the same table as the row id
        assert column.id.table is column.ciphertext.table is column.master_key_id.table
