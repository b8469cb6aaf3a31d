"""Attacks with crafted input, made by a tenant holding only its own API key (and, where the
hole was the operator's, by the operator), through the real API on a real SQLite file.

- Names with a trailing newline: ``re.match(r"...$")`` let ``"web\\n"`` through as an app,
  env var, database, tenant, key or release name. Every one is now 422 naming the field, and
  nothing is created.
- Keys outliving their maker: a key that expires in a minute minted a key that never expires,
  and an ``admin`` key minted ``inference`` keys it did not hold. Now 403, nothing minted;
  an omitted expiry inherits the maker's.
- Source archives nested thousands of levels deep answered 500 (``RecursionError``): now 422
  ``archive-rejected``, like very long names, names with control characters, too many entries
  and symlink chains, with no deployment and no file left behind.
- What ``deploy`` implies: the OpenAPI document and the skills say that a ``deploy`` key can
  read secrets through the code it deploys.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from control.settings import Settings
from tests.conftest import Caller

GZIP = {"Content-Type": "application/gzip"}
SKILLS = Path(__file__).resolve().parents[2] / "skills"


@pytest.fixture
def settings(tmp_path: Path, migrated_database: Path) -> Settings:
    """No job workers and no reconciler: an accepted deployment stays queued, so a test sees
    exactly what the API call created and no build touches Docker."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(migrated_database, data_dir / "moorage.db")
    return Settings(
        data_dir=data_dir,
        base_domain="apps.test",
        job_workers=0,
        reconcile_interval_s=0,
        max_source_entries=1500,
        database_purge_interval_s=0,
    )


def assert_refused(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["request_id"], body
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


# ---- names with a trailing newline (or any control character) ----


def test_an_app_named_with_a_trailing_newline_is_refused_and_not_created(tenant: Caller) -> None:
    body = assert_refused(tenant.post("/v1/apps", json={"name": "web\n"}), 422, "validation-failed", "name")
    assert "DNS label" in body["detail"]
    assert tenant.get("/v1/apps").json()["items"] == []


@pytest.mark.parametrize("name", ["web\r", "we\tb", "web\x00", "web\x7f", "web\u2028", "web\x85"])
def test_an_app_name_with_any_control_character_is_refused(tenant: Caller, name: str) -> None:
    assert_refused(tenant.post("/v1/apps", json={"name": name}), 422, "validation-failed", "name")
    assert tenant.get("/v1/apps").json()["items"] == []


def test_an_env_var_named_port_newline_is_refused_and_never_stored(tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert_refused(tenant.patch("/v1/apps/web/env", json={"vars": {"PORT\n": "1"}}), 422, "validation-failed", "vars.PORT\n")
    assert_refused(
        tenant.request("PUT", "/v1/apps/web/env", json={"vars": {"OK": "1", "NAME\n": "2"}}),
        422,
        "validation-failed",
        "vars.NAME\n",
    )
    assert_refused(tenant.request("PUT", "/v1/apps/web/env/NAME%0A", json={"value": "1"}), 422, "validation-failed", "name")
    env = tenant.get("/v1/apps/web/env").json()
    assert env["vars"] == [] and env["env_version"] == 0  # all-or-nothing: the valid OK was not kept either


def test_a_database_named_with_a_trailing_newline_is_422_not_500(tenant: Caller) -> None:
    for engine in ("redis", "postgres"):
        r = tenant.post("/v1/databases", json={"name": "x\n", "engine": engine})
        assert_refused(r, 422, "validation-failed", "name")
    assert tenant.get("/v1/databases").json()["items"] == []


def test_the_operator_cannot_create_a_tenant_named_with_a_trailing_newline(operator: Caller) -> None:
    assert_refused(operator.post("/v1/tenants", json={"name": "rt-nl\n"}), 422, "validation-failed", "name")
    assert_refused(
        operator.post("/v1/tenants", json={"name": "rt-nl", "display_name": "RT\nadmin"}),
        422,
        "validation-failed",
        "display_name",
    )
    assert operator.get("/v1/tenants").json()["items"] == []


def test_key_and_release_names_with_a_newline_are_refused(tenant: Caller) -> None:
    before = [k["id"] for k in tenant.get("/v1/keys").json()["items"]]
    assert_refused(
        tenant.post("/v1/keys", json={"scopes": ["read"], "name": "ci\nscopes=admin"}), 422, "validation-failed", "name"
    )
    assert [k["id"] for k in tenant.get("/v1/keys").json()["items"]] == before
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert_refused(tenant.post("/v1/apps/web/rollback", json={"release": "v1\n"}), 422, "validation-failed", "release")


# ---- keys never outlive, nor outrank, their maker ----


def _key(caller: Caller, body: dict[str, Any]) -> httpx.Response:
    return caller.post("/v1/keys", json=body)


def _as(caller: Caller, created: httpx.Response) -> Caller:
    assert created.status_code == 201, created.text
    return Caller(caller.client, created.json()["token"], created.json()["id"], caller.tenant_id)


def test_a_short_lived_admin_key_cannot_mint_a_key_that_outlives_it(tenant: Caller) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)
    short = _as(tenant, _key(tenant, {"scopes": ["admin"], "name": "short", "expires_at": soon.isoformat()}))
    keys_before = {k["id"] for k in tenant.get("/v1/keys").json()["items"]}

    later = (soon + timedelta(days=365)).isoformat()
    body = assert_refused(_key(short, {"scopes": ["admin"], "expires_at": later}), 403, "expiry-exceeds-issuer")
    assert soon.isoformat()[:19] in body["detail"] and "earlier" in body["detail"]
    assert {k["id"] for k in tenant.get("/v1/keys").json()["items"]} == keys_before  # nothing minted

    heir = _key(short, {"scopes": ["admin"], "name": "heir"})  # no expiry asked: the maker's
    assert heir.status_code == 201, heir.text
    assert heir.json()["expires_at"] is not None
    assert datetime.fromisoformat(heir.json()["expires_at"]) == soon
    earlier = (soon - timedelta(seconds=30)).isoformat()
    assert datetime.fromisoformat(_key(short, {"scopes": ["read"], "expires_at": earlier}).json()["expires_at"]) < soon


def test_a_key_cannot_grant_scopes_it_does_not_hold(new_tenant) -> None:
    admin = new_tenant("rt-scopes", ["admin"])  # no inference
    keys_before = {k["id"] for k in admin.get("/v1/keys").json()["items"]}
    body = assert_refused(_key(admin, {"scopes": ["inference"]}), 403, "scope-exceeds-issuer")
    assert "inference" in body["detail"] and "fewer scopes" in body["detail"]
    assert_refused(_key(admin, {"scopes": ["read", "inference"]}), 403, "scope-exceeds-issuer")
    assert {k["id"] for k in admin.get("/v1/keys").json()["items"]} == keys_before
    reader = _as(admin, _key(admin, {"scopes": ["deploy", "read"]}))  # implied scopes stay grantable
    assert reader.get("/v1/whoami").status_code == 200


def test_an_expiring_operator_key_cannot_mint_a_tenant_key_that_outlives_it(app: Litestar, operator: Caller) -> None:
    services = app.state.services
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    from control.store.repositories.api_keys import (
        ApiKeyRepository,  # a short-lived operator key, as an operator might keep
    )

    with services.db.write() as session:
        short = services.keys._add(ApiKeyRepository(session), None, "short-op", ["operator"], operator.key_id, soon)
    op = Caller(operator.client, short.token, short.key.id)
    tenant_id = op.post("/v1/tenants", json={"name": "rt-op"}).json()["id"]
    later = (soon + timedelta(days=1)).isoformat()
    assert_refused(
        op.post(f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["admin"], "expires_at": later}), 403, "expiry-exceeds-issuer"
    )
    assert op.get(f"/v1/tenants/{tenant_id}/keys").json()["items"] == []
    minted = op.post(f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["admin", "inference"]})
    assert minted.status_code == 201, minted.text  # operators grant any tenant scope ...
    assert datetime.fromisoformat(minted.json()["expires_at"]) == soon  # ... but never past their own expiry


# ---- source archives: depth, names, entries ----


def _tar_gz(*members: tarfile.TarInfo) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return raw.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _deep(levels: int) -> str:
    return "/".join(["d"] * levels)


ARCHIVES = {
    "2000-levels-deep": (_tar_gz(_file("Dockerfile"), _file(_deep(2000) + "/f")), "nested 2001 levels"),
    "65-levels-deep": (_tar_gz(_file(_deep(64) + "/f")), "nested 65 levels"),
    "deep-through-a-symlink": (
        _tar_gz(_file(_deep(60) + "/f"), _symlink("s", _deep(60)), _file("s/e/e/e/e/e/f")),
        "through symlinks",
    ),
    "symlink-chain": (
        _tar_gz(_file("f"), _symlink("s0", "."), *[_symlink(f"s{i}", f"s{i - 1}") for i in range(1, 1200)]),
        "too deeply",
    ),
    "long-component": (_tar_gz(_file("a" * 300)), "over 255 bytes"),
    "long-name": (_tar_gz(_file("/".join(["b" * 200] * 6))), "names are at most 1024"),
    "newline-in-name": (_tar_gz(_file("app\n.py")), "control character"),
    "escape-in-link-target": (_tar_gz(_file("f"), _symlink("l", "f\x1b[2J")), "control character"),
    "too-many-entries": (_tar_gz(*[_file(f"f{i}") for i in range(1501)]), "more than 1500 entries"),
}


@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_a_hostile_archive_is_refused_with_422_and_leaves_nothing(tenant: Caller, settings: Settings, case: str) -> None:
    archive, reason = ARCHIVES[case]
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    body = assert_refused(tenant.post("/v1/apps/web/deployments", content=archive, headers=GZIP), 422, "archive-rejected")
    assert reason in body["detail"] and "Nothing was deployed" in body["detail"]
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == []
    deployments = settings.data_dir / "deployments"
    assert not deployments.exists() or list(deployments.iterdir()) == []  # no upload, no partial tree


def test_an_archive_at_the_limits_is_accepted(tenant: Caller, settings: Settings) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    archive = _tar_gz(
        _file("Dockerfile"), _file(_deep(63) + "/f"), _file("c" * 255), _symlink("s", _deep(10)), _file("s/" + _deep(53) + "/g")
    )
    r = tenant.post("/v1/apps/web/deployments", content=archive, headers=GZIP)
    assert r.status_code == 202, r.text
    src = settings.data_dir / "deployments" / r.json()["id"] / "src"
    assert (src / _deep(63) / "f").is_file() and (src / _deep(63) / "g").is_file()


# ---- what the deploy scope implies, said where agents read it ----


def test_openapi_and_skills_say_a_deploy_key_can_read_secrets(client) -> None:
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["ApiKey"]["description"]
    deploy_line = next(line for line in scheme.splitlines() if line.startswith("- `deploy`"))
    assert "can read every secret" in deploy_line and "runs with the app's environment" in deploy_line
    assert "expiry-exceeds-issuer" in scheme and "scope-exceeds-issuer" in scheme
    key_create = spec["components"]["schemas"]["KeyCreate"]["properties"]
    assert "can read every secret" in key_create["scopes"]["description"]
    assert "expires with its maker" in key_create["expires_at"]["description"]
    env_get = spec["paths"]["/v1/apps/{app}/env"]["get"]
    reveal = next(p for p in env_get["parameters"] if p["name"] == "reveal")
    assert "can read every secret" in reveal["description"] and "`deploy`" in env_get["description"]
    for skill in ("moorage-env", "moorage-deploy"):
        text = " ".join((SKILLS / skill / "SKILL.md").read_text().split())
        assert "A `deploy` key can read every secret" in text or "`deploy` scope can read every value" in text, skill
