"""Attacks of one tenant on another's app volumes, against the real control plane, dockerd,
runsc, loop devices and Traefik. The attacker holds only its own tenant's key, names its
tenant so that joined names would meet the victim's (`X` + app `y-notes` vs `X-y` + app
`notes`), names its app and volume like the victim's, and names the victim's volume id
wherever a volume can be named: it never lists, reads, deletes or mounts the victim's volume
(404 everywhere), and its container gets a volume of its own, empty."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import httpx
import pytest
from litestar.testing import TestClient

from control.app import create_app
from runtime.traefik import TraefikProcess
from runtime.volumes import ID_LABEL, LoopImages
from tests.conftest import Caller
from tests.e2e.conftest import cleanup_tenant, e2e_settings, traefik  # noqa: F401 (fixture)
from tests.e2e.test_volumes import notes_source
from tests.runtime.helpers import RUN_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]
VICTIM, ATTACKER = f"v{RUN_ID}-y", f"v{RUN_ID}"  # `notes` of the one, `y-notes` of the other


@pytest.fixture(scope="module")
def callers(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Caller], str]]:  # noqa: F811
    """Each tenant's caller, and the URL apps answer at (Traefik)."""
    data_dir = tmp_path_factory.mktemp("volume-attacks")
    app = create_app(e2e_settings(data_dir, traefik, volume_quota="enforced", deploys_per_tenant=2))
    try:
        with TestClient(app, raise_server_exceptions=False, timeout=120) as client:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("attacks").token)
            made = {}
            for name in (VICTIM, ATTACKER):
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "own"}).json()
                made[name] = Caller(client, key["token"], key["id"], tenant["id"])
            yield made, traefik.url
    finally:
        for name in (VICTIM, ATTACKER):
            cleanup_tenant(name)
        loops = LoopImages(data_dir / "volumes")
        for volume_id in loops.owned():
            loops.remove(volume_id)


def _deploy(caller: Caller, app: str, version: str) -> None:
    assert caller.post("/v1/apps", json={"name": app, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
    assert caller.post(f"/v1/apps/{app}/volumes", json={"name": "data", "mount_path": "/data", "size_mb": 4}).status_code == 201
    r = caller.post(f"/v1/apps/{app}/deployments", content=notes_source(version), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    while (status := caller.get(f"/v1/apps/{app}/deployments/{r.json()['id']}").json()["status"]) not in ("running", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status == "running"


def _host(tenant: str, app: str) -> dict[str, str]:
    return {"Host": f"{app}.{tenant}.apps.test"}


def test_a_tenant_never_reaches_another_tenants_volume(callers: tuple[dict[str, Caller], str]) -> None:
    (made, url) = callers
    victim, attacker = made[VICTIM], made[ATTACKER]
    _deploy(victim, "notes", f"victim-{RUN_ID}")
    assert httpx.post(url + "/", headers=_host(VICTIM, "notes"), content="victim's secret", timeout=5).status_code == 201
    [secret] = victim.get("/v1/apps/notes/volumes").json()["items"]

    _deploy(attacker, "y-notes", f"attacker-{RUN_ID}")
    assert attacker.post("/v1/apps", json={"name": "notes"}).status_code == 201  # the victim's app name, its own
    for path in (
        f"/v1/apps/notes/volumes/{secret['id']}",
        "/v1/apps/notes/volumes/data",
        f"/v1/apps/y-notes/volumes/{secret['id']}",
        f"/v1/apps/{secret['app_id']}/volumes/{secret['id']}",
    ):
        assert attacker.get(path).status_code == 404, path
        assert attacker.delete(path + "?force=true").status_code == 404, path
    assert attacker.get(f"/v1/apps/{secret['app_id']}/volumes").status_code == 404
    # A volume is only ever named by its app's path: a body naming the victim's id is a name like any other.
    by_id = attacker.post("/v1/apps/y-notes/volumes", json={"name": secret["id"], "mount_path": "/x", "size_mb": 1})
    assert by_id.status_code == 422
    assert attacker.get("/v1/apps/notes/volumes").json()["items"] == []

    own = httpx.get(url + "/", headers=_host(ATTACKER, "y-notes"), timeout=5)
    assert own.status_code == 200 and "victim's secret" not in own.text
    client = docker.from_env()
    [container] = client.containers.list(filters={"label": [f"moorage.tenant={ATTACKER}", "moorage.app=y-notes"]})
    mounted = [m["Name"] for m in container.attrs["Mounts"] if m.get("Type") == "volume"]
    assert len(mounted) == 1 and secret["id"] not in mounted[0]
    labels = client.volumes.get(mounted[0]).attrs["Labels"]
    assert labels["moorage.tenant"] == ATTACKER and labels[ID_LABEL] != secret["id"]
    assert client.volumes.get(f"moorage-vol-{secret['id']}").attrs["Labels"]["moorage.tenant"] == VICTIM

    still = httpx.get(url + "/", headers=_host(VICTIM, "notes"), timeout=5)
    assert "victim's secret" in still.text  # nothing of the victim's changed
    assert victim.get("/v1/apps/notes/volumes").json()["items"][0]["id"] == secret["id"]
