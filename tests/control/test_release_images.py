"""Which releases keep their image: the releases listing says so (``image_kept``), a rollback
to one whose image was pruned is refused with 409 ``release-image-pruned`` before anything is
queued, and the CLI shows the same column. The images themselves are the reconciler's
(tests/control/test_reconciler.py, tests/e2e/test_image_lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar import Litestar

from control.cli.main import main
from control.domain.records import Release
from control.settings import Settings
from tests.conftest import Caller
from tests.live_server import cli_tenant


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(kept_releases=2, job_workers=0, reconcile_interval_s=0)


def _image(n: int) -> str:
    return "sha256:" + f"{n:02d}" * 32


def _release(app: Litestar, tenant_id: str, app_id: str, image: str, deployment: str) -> Release:
    """A release as a deploy makes it: created, then current."""
    releases = app.state.services.deploys.releases
    release = releases.create(
        tenant_id=tenant_id,
        app_id=app_id,
        deployment_id=deployment,
        image_id=image,
        image_tag=f"moorage-apps/{tenant_id}/web:{deployment}",
        env_version=0,
        port=8080,
        health_check_path="/",
    )
    releases.make_current(release, [("c" * 64, f"web-{deployment}")])
    return release


@pytest.fixture
def four_releases(app: Litestar, tenant: Caller) -> str:
    """App ``web`` with v1..v4, each its own image, v4 current; its id."""
    created = tenant.post("/v1/apps", json={"name": "web"})
    assert created.status_code == 201, created.text
    app_id = created.json()["id"]
    for n in range(1, 5):
        _release(app, str(tenant.tenant_id), app_id, _image(n), f"dep_{n}")
    return str(app_id)


def _kept(tenant: Caller) -> dict[str, bool]:
    r = tenant.get("/v1/apps/web/releases")
    assert r.status_code == 200, r.text
    return {item["name"]: item["image_kept"] for item in r.json()["items"]}


def test_the_listing_says_which_releases_keep_their_image(four_releases: str, tenant: Caller) -> None:
    assert _kept(tenant) == {"v1": False, "v2": False, "v3": True, "v4": True}


def test_a_rollback_to_a_pruned_release_is_refused_naming_the_kept_ones(four_releases: str, tenant: Caller) -> None:
    r = tenant.post("/v1/apps/web/rollback", json={"release": "v1"})
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "release-image-pruned" and body["type"] == "/problems/release-image-pruned"
    detail = body["detail"]
    assert "v1's image was pruned" in detail and "2 newest releases" in detail
    assert "(v3;" in detail, "names the releases still rollback targets, the current one left out"
    assert "deploy v1's source again" in detail and "POST /v1/apps/web/deployments" in detail
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == [], "nothing was queued"

    kept = tenant.post("/v1/apps/web/rollback", json={"release": "v3"})
    assert kept.status_code == 202, kept.text
    assert kept.json()["source"]["release"] == "v3"
    current = tenant.post("/v1/apps/web/rollback", json={"release": "v4"})
    assert current.status_code == 409 and current.json()["code"] == "already-current"


def test_a_release_sharing_a_kept_image_is_a_rollback_target(four_releases: str, app: Litestar, tenant: Caller) -> None:
    """A rollback's release reuses its target's image: that image is kept while either is."""
    _release(app, str(tenant.tenant_id), four_releases, _image(2), "dep_5")  # v5: a rollback to v2, say
    assert _kept(tenant) == {"v1": False, "v2": True, "v3": False, "v4": True, "v5": True}
    assert tenant.post("/v1/apps/web/rollback", json={"release": "v3"}).json()["code"] == "release-image-pruned"
    assert tenant.post("/v1/apps/web/rollback", json={"release": "v2"}).status_code == 202


def test_the_openapi_schema_describes_image_kept_and_the_refusal(client, tenant: Caller) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    release = spec["components"]["schemas"]["ReleaseOut"]
    assert "image_kept" in release["required"] and release["properties"]["image_kept"]["type"] == "boolean"
    assert "release-image-pruned" in release["properties"]["image_kept"]["description"]
    rollback = spec["paths"]["/v1/apps/{app}/rollback"]["post"]
    assert "release-image-pruned" in rollback["description"] and "409" in rollback["responses"]


def test_the_cli_lists_image_kept_and_exits_3_on_a_pruned_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_tenant(tmp_path / "data", monkeypatch, kept_releases=1) as served:
        assert main(["apps", "create", "web", "--json"]) == 0
        [tenant_id] = served.app.state.services.tenants.ids()
        app_id = served.app.state.services.apps.get(tenant_id, "web").id
        for n in (1, 2):
            _release(served.app, tenant_id, app_id, _image(n), f"dep_{n}")
        capsys.readouterr()
        assert main(["releases", "web"]) == 0
        header, v1, v2 = capsys.readouterr().out.splitlines()
        column = header.split().index("IMAGE_KEPT")
        assert (v1.split()[column], v2.split()[column]) == ("false", "true"), (header, v1, v2)
        assert main(["rollback", "web", "--release", "v1", "--json"]) == 3
        assert "release-image-pruned" in capsys.readouterr().err
