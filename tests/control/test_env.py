"""Env vars over the API: atomic writes, versions, reveal rules, isolation, fail-closed reads,
and no plaintext anywhere it could leak (responses, logs, the SQLite file and its WAL)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from control.domain.env import MAX_VALUE_BYTES, MAX_VARS_PER_APP, EnvValue
from control.logging import attach_stream
from control.security.keyring import Keyring
from control.security.master_keys import generate_master_key
from control.store.models import AppRow, EnvVarRow
from tests.conftest import Caller
from tests.control.test_problems import assert_problem

ENV = "/v1/apps/web/env"


@pytest.fixture
def web(tenant: Caller) -> Caller:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    return tenant


def put(caller: Caller, path: str, body: dict) -> object:
    return caller.request("PUT", path, json=body)


def listing(caller: Caller) -> dict:
    response = caller.get(ENV)
    assert response.status_code == 200, response.text
    return response.json()


def revealed(caller: Caller) -> dict[str, str]:
    response = caller.get(ENV, params={"reveal": "true"})
    assert response.status_code == 200, response.text
    return {v["name"]: v["value"] for v in response.json()["vars"]}


def versions(caller: Caller) -> dict[str, int]:
    return {v["name"]: v["version"] for v in listing(caller)["vars"]}


def test_put_replaces_the_whole_set_and_listing_shows_no_values(web: Caller) -> None:
    response = put(web, ENV, {"vars": {"DATABASE_URL": "postgres://u:pw-1111@db/x", "DEBUG": {"value": "0", "secret": False}}})
    assert response.status_code == 200, response.text
    body = listing(web)
    assert body["env_version"] == 1
    assert [(v["name"], v["version"], v["secret"]) for v in body["vars"]] == [("DATABASE_URL", 1, True), ("DEBUG", 1, False)]
    assert all("value" not in v for v in body["vars"])
    assert "pw-1111" not in web.get(ENV).text and "pw-1111" not in response.text

    put(web, ENV, {"vars": {"DEBUG": {"value": "0", "secret": False}, "NEW": "n"}})  # DATABASE_URL left out
    assert versions(web) == {"DEBUG": 1, "NEW": 1}  # DEBUG unchanged: same value, same version
    assert revealed(web) == {"DEBUG": "0", "NEW": "n"}
    assert listing(web)["env_version"] == 2


def test_patch_merges_and_null_removes(web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "1", "B": "2", "C": "3"}})
    response = web.patch(ENV, json={"vars": {"A": "1", "B": "two", "C": None, "D": "4"}})
    assert response.status_code == 200, response.text
    assert versions(web) == {"A": 1, "B": 2, "D": 1}
    assert revealed(web) == {"A": "1", "B": "two", "D": "4"}
    assert response.json()["env_version"] == 2  # one bump per call, however many names changed


def test_a_write_that_changes_nothing_bumps_nothing(web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "1"}})
    put(web, ENV, {"vars": {"A": "1"}})
    web.patch(ENV, json={"vars": {"ABSENT": None}})
    assert listing(web)["env_version"] == 1 and versions(web) == {"A": 1}
    put(web, ENV, {"vars": {"A": {"value": "1", "secret": False}}})  # the flag is part of the var
    assert versions(web) == {"A": 2}


def test_bulk_write_is_atomic_and_names_every_bad_field(web: Caller) -> None:
    put(web, ENV, {"vars": {"KEEP": "kept"}})
    before = listing(web)
    bad = {"OK": "fine", "1BAD": "x", "PORT": "80", "MOORAGE_TOKEN": "x", "NUL": "a\0b", "BIG": "x" * (MAX_VALUE_BYTES + 1)}
    for method in ("PUT", "PATCH"):
        body = assert_problem(web.request(method, ENV, json={"vars": bad}), 422, "validation-failed")
        fields = {e["field"] for e in body["errors"]}
        assert fields == {"vars.1BAD", "vars.PORT", "vars.MOORAGE_TOKEN", "vars.NUL", "vars.BIG"}
        assert "nothing was changed" in body["detail"]
        assert "xxxxxxxx" not in str(body) and "a\\u0000b" not in str(body)
    assert listing(web) == before  # OK was not written, KEEP not removed, no version bump
    assert_problem(put(web, ENV, {"vars": {"X" * 256: "v"}}), 422, "validation-failed")
    assert_problem(put(web, ENV, {"vars": {"A": 5}}), 422, "validation-failed")
    assert_problem(put(web, ENV, {"vars": {"A": "1"}, "extra": 1}), 422, "validation-failed")


def test_count_limit_per_app(web: Caller) -> None:
    too_many = {f"V{i}": "x" for i in range(MAX_VARS_PER_APP + 1)}
    body = assert_problem(put(web, ENV, {"vars": too_many}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "vars"
    assert listing(web)["vars"] == []
    assert put(web, ENV, {"vars": dict(list(too_many.items())[:-1])}).status_code == 200
    assert_problem(put(web, f"{ENV}/ONE_MORE", {"value": "x"}), 422, "validation-failed")


def test_single_var_put_and_delete(web: Caller) -> None:
    created = put(web, f"{ENV}/API_KEY", {"value": "k-1"})
    assert created.status_code == 200 and created.json()["version"] == 1 and "value" not in created.json()
    assert put(web, f"{ENV}/API_KEY", {"value": "k-2", "secret": True}).json()["version"] == 2
    assert revealed(web) == {"API_KEY": "k-2"}
    body = assert_problem(put(web, f"{ENV}/bad-name", {"value": "x"}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "name"
    body = assert_problem(put(web, f"{ENV}/OK", {"value": "x" * (MAX_VALUE_BYTES + 1)}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "value"
    assert web.delete(f"{ENV}/API_KEY").status_code == 204
    assert_problem(web.delete(f"{ENV}/API_KEY"), 404, "not-found")
    assert listing(web) == {**listing(web), "vars": [], "env_version": 3}


def test_apps_by_id_and_unknown_apps(web: Caller) -> None:
    app_id = web.get("/v1/apps/web").json()["id"]
    put(web, f"/v1/apps/{app_id}/env", {"vars": {"A": "1"}})
    assert listing(web)["app_id"] == app_id
    assert_problem(web.get("/v1/apps/nope/env"), 404, "not-found")
    assert_problem(put(web, "/v1/apps/nope/env", {"vars": {}}), 404, "not-found")


@pytest.mark.parametrize("scopes", [["read"], ["deploy"]])
def test_reveal_needs_admin(operator: Caller, web: Caller, scopes: list[str]) -> None:
    put(web, ENV, {"vars": {"SECRET": "only-admins-9"}})
    key = web.post("/v1/keys", json={"scopes": scopes}).json()
    weaker = Caller(web.client, key["token"], key["id"], web.tenant_id)
    assert listing(weaker)["vars"][0]["name"] == "SECRET"
    response = weaker.get(ENV, params={"reveal": "true"})
    body = assert_problem(response, 403, "insufficient-scope")
    assert "admin" in body["detail"] and "only-admins-9" not in response.text
    assert_problem(operator.get(ENV, params={"reveal": "true"}), 403, "tenant-key-required")


def test_writes_need_deploy(new_tenant, web: Caller) -> None:
    key = web.post("/v1/keys", json={"scopes": ["read"]}).json()
    reader = Caller(web.client, key["token"], key["id"], web.tenant_id)
    assert_problem(put(reader, ENV, {"vars": {"A": "1"}}), 403, "insufficient-scope")
    assert_problem(reader.delete(f"{ENV}/A"), 403, "insufficient-scope")


def test_another_tenants_app_is_404_even_by_id(new_tenant, web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "alpha-secret"}})
    app_id = web.get("/v1/apps/web").json()["id"]
    other = new_tenant("other", ["admin"])
    assert other.post("/v1/apps", json={"name": "web"}).status_code == 201  # same name, own app
    for path in (f"/v1/apps/{app_id}/env",):
        assert_problem(other.get(path, params={"reveal": "true"}), 404, "not-found")
        assert_problem(put(other, path, {"vars": {"A": "b"}}), 404, "not-found")
    assert listing(other)["vars"] == []
    assert revealed(web) == {"A": "alpha-secret"}


def test_resolve_decrypts_in_memory_for_deploys(app, web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "1", "B": "ü-2"}})
    app_id = web.get("/v1/apps/web").json()["id"]
    env = app.state.services.env_vars
    assert env.resolve(web.tenant_id, app_id) == {"A": "1", "B": "ü-2"}
    with pytest.raises(Exception, match="No app"):
        env.resolve("ten_other", app_id)


def _rows(app) -> list[EnvVarRow]:
    with app.state.services.db.read() as session:
        return list(session.scalars(select(EnvVarRow).order_by(EnvVarRow.name)))


def _sql(app, statement) -> None:  # type: ignore[no-untyped-def]
    with app.state.services.db.write() as session:
        session.execute(statement)


def test_tampered_value_fails_closed_and_setting_it_again_repairs(app, web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "tamper-me-1", "B": "fine"}})
    row = _rows(app)[0]
    flipped = bytearray(row.ciphertext)
    flipped[-1] ^= 1
    _sql(app, update(EnvVarRow).where(EnvVarRow.id == row.id).values(ciphertext=bytes(flipped)))
    response = web.get(ENV, params={"reveal": "true"})
    body = assert_problem(response, 500, "secret-integrity-failure")
    assert "'A'" in body["detail"] and "tamper-me-1" not in response.text and "fine" not in response.text
    assert listing(web)["vars"][0]["name"] == "A"  # metadata still lists
    assert put(web, f"{ENV}/A", {"value": "tamper-me-1"}).json()["version"] == 2  # overwrite heals
    assert revealed(web) == {"A": "tamper-me-1", "B": "fine"}


def test_a_value_moved_to_another_row_fails_closed(app, web: Caller, tenant: Caller) -> None:
    put(web, ENV, {"vars": {"A": "for-a-only", "B": "b"}})
    tenant.post("/v1/apps", json={"name": "api"})
    a, b = _rows(app)
    _sql(app, update(EnvVarRow).where(EnvVarRow.id == b.id).values(ciphertext=a.ciphertext))  # same app, other name
    assert_problem(web.get(ENV, params={"reveal": "true"}), 500, "secret-integrity-failure")
    api_id = tenant.get("/v1/apps/api").json()["id"]
    _sql(app, update(EnvVarRow).where(EnvVarRow.id == b.id).values(ciphertext=b.ciphertext))
    _sql(app, update(EnvVarRow).where(EnvVarRow.id == a.id).values(app_id=api_id))  # other app, same name
    response = tenant.get("/v1/apps/api/env", params={"reveal": "true"})
    assert_problem(response, 500, "secret-integrity-failure")
    assert "for-a-only" not in response.text


def test_unknown_master_key_is_503_without_the_value(app, web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "v"}})
    stranger = Keyring([generate_master_key("retired-elsewhere")])
    row = _rows(app)[0]
    sealed = stranger.seal("from-elsewhere", b"")
    _sql(app, update(EnvVarRow).where(EnvVarRow.id == row.id).values(ciphertext=sealed.blob, master_key_id=sealed.key_id))
    response = web.get(ENV, params={"reveal": "true"})
    body = assert_problem(response, 503, "master-key-unavailable")
    assert "retired-elsewhere" in body["detail"] and response.headers["retry-after"]
    with pytest.raises(Exception, match="retired-elsewhere"):
        app.state.services.env_vars.resolve(web.tenant_id, row.app_id)


def test_no_plaintext_in_the_database_file_or_its_wal(app, web: Caller) -> None:
    values = {f"V{i}": f"PLAINTEXT-CANARY-{i}-ZQX" for i in range(5)}
    put(web, ENV, {"vars": values})
    web.patch(ENV, json={"vars": {"V0": "PLAINTEXT-CANARY-CHANGED-ZQX"}})
    db_path = Path(app.state.services.db.engine.url.database)
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0  # the writes are in the WAL right now
    files = [db_path, wal]
    for path in files:
        assert b"PLAINTEXT-CANARY" not in path.read_bytes(), path
    with app.state.services.db.engine.connect() as connection:
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    for path in files:
        assert b"PLAINTEXT-CANARY" not in path.read_bytes(), path
    assert b"V0" in db_path.read_bytes()  # the grep does see the file's contents
    assert revealed(web)["V0"] == "PLAINTEXT-CANARY-CHANGED-ZQX"


def test_values_never_reach_the_logs(app, web: Caller) -> None:
    captured = io.StringIO()
    handler = attach_stream(captured)
    try:
        put(web, ENV, {"vars": {"A": "LOG-CANARY-1", "1BAD": "LOG-CANARY-2"}})
        put(web, ENV, {"vars": {"A": "LOG-CANARY-1"}})
        web.get(ENV, params={"reveal": "true"})
        row = _rows(app)[0]
        _sql(
            app,
            update(EnvVarRow)
            .where(EnvVarRow.id == row.id)
            .values(ciphertext=row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1])),
        )
        web.get(ENV, params={"reveal": "true"})
    finally:
        logging.getLogger().removeHandler(handler)
    logs = captured.getvalue()
    assert "env_var_unreadable" in logs and "LOG-CANARY" not in logs


def test_env_version_lives_on_the_app_row(app, web: Caller) -> None:
    put(web, ENV, {"vars": {"A": "1"}})
    web.patch(ENV, json={"vars": {"B": "2"}})
    with app.state.services.db.read() as session:
        assert session.scalar(select(AppRow.env_version).where(AppRow.name == "web")) == 2


def test_domain_value_repr_hides_the_value() -> None:
    assert "hidden-1" not in repr(EnvValue("hidden-1"))


def test_openapi_documents_reveal_and_both_write_styles(client) -> None:
    spec = client.get("/openapi.json").json()["paths"]
    env = spec["/v1/apps/{app}/env"]
    assert {"get", "put", "patch"} <= env.keys()
    assert any(p["name"] == "reveal" and "admin" in p["description"] for p in env["get"]["parameters"])
    assert {"put", "delete"} <= spec["/v1/apps/{app}/env/{name}"].keys()
