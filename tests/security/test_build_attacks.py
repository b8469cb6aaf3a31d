"""Attacks through the build, as a malicious tenant holding only its own API key, against a
real control plane listening on loopback (uvicorn), the real dockerd, runsc and Traefik:

* ``FROM <prefix of the victim's image id>``: dockerd resolved it against every image on the
  host and the build log printed the victim's ``/app/app.py``;
* ``ADD http://127.0.0.1:<control-plane port>/readyz``: the daemon fetched it from the host;
* git sources read the host: ``file://`` repositories, https hosts resolving to loopback, and
  a DNS answer that changes between the API's check and the clone (rebinding);
* the build cache is shared: tenant B saw ``Using cache`` on a COPY identical to tenant A's.

Each attack must now fail with a reason that says what to change, and leak nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import TERMINAL, cleanup_tenant, e2e_settings, traefik  # noqa: F401 (fixture)
from tests.git_server import git_http_server, make_repo
from tests.live_server import free_port, serving
from tests.runtime.helpers import RUN_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PY = "moorage/python:3-bookworm"


@dataclass
class Tenant:
    name: str
    id: str
    http: httpx.Client

    def deploy(self, app: str, files: dict[str, str]) -> dict:
        r = self.http.post(f"/v1/apps/{app}/deployments", content=tar_gz(files), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 202, r.text
        return self.wait(app, r.json()["id"])

    def deploy_git(self, app: str, url: str) -> httpx.Response:
        return self.http.post(f"/v1/apps/{app}/deployments", json={"git": {"url": url, "ref": "main"}})

    def wait(self, app: str, deployment: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            body = self.http.get(f"/v1/apps/{app}/deployments/{deployment}").json()
            if body["status"] in TERMINAL:
                return body
            time.sleep(0.25)
        raise AssertionError(f"deployment never finished: {body}")

    def log(self, app: str, deployment: str) -> str:
        return self.http.get(f"/v1/apps/{app}/deployments/{deployment}/logs").text

    def app(self, name: str) -> None:
        r = self.http.post("/v1/apps", json={"name": name, "port": 8080})
        assert r.status_code == 201, r.text


@dataclass
class Stack:
    url: str
    port: int
    victim: Tenant
    attacker: Tenant


@contextmanager
def _stack(traefik, data_dir: Path, label: str, **overrides: object) -> Iterator[Stack]:  # noqa: F811
    port = free_port()
    settings = e2e_settings(data_dir, traefik, port=port, **overrides)
    names = (f"{label}v-{RUN_ID}", f"{label}a-{RUN_ID}")
    try:
        with serving(settings) as (url, app):
            token = app.state.services.keys.bootstrap_operator("attack").token
            operator = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
            tenants = []
            for name in names:
                tenant = operator.post("/v1/tenants", json={"name": name}).json()
                key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "own"}).json()
                tenants.append(
                    Tenant(
                        name,
                        tenant["id"],
                        httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key['token']}"}),
                    )
                )
            yield Stack(url, port, *tenants)
    finally:  # once the control plane (and its reconciler) stopped
        for name in names:
            cleanup_tenant(name)


@pytest.fixture(scope="module")
def stack(traefik, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    with _stack(traefik, tmp_path_factory.mktemp("attack-data"), "b") as made:
        yield made


@pytest.fixture(scope="module")
def victim_release(stack: Stack) -> dict:
    """The victim's app, built and running: its image holds /app/app.py with a marker."""
    stack.victim.app("web")
    done = stack.victim.deploy("web", source(f"victim-secret-{RUN_ID}"))
    assert done["status"] == "running", done
    return done


def test_from_a_prefix_of_another_tenants_image_id_fails_and_leaks_nothing(stack: Stack, victim_release: dict) -> None:
    prefix = victim_release["image"].removeprefix("sha256:")[:12]
    stack.attacker.app("probe")
    for base, says in ((prefix, "image ids"), (f"moorage-apps/{stack.victim.id}/web:{victim_release['id']}", "another tenant")):
        done = stack.attacker.deploy("probe", {"Dockerfile": f"FROM {base}\nRUN cat /app/app.py\n"})
        log = stack.attacker.log("probe", done["id"])
        assert f"victim-secret-{RUN_ID}" not in log, f"the victim's /app/app.py leaked: {log[-1500:]}"
        assert done["status"] == "failed" and "Step 1/" not in log, (done, log[-2000:])
        assert f"line 1: FROM {base}: " in done["reason"] and says in done["reason"] and PY in done["reason"]
        assert "nothing was built" in done["reason"] and done["image"] is None


def test_add_from_the_control_planes_loopback_port_fails_before_any_fetch(stack: Stack) -> None:
    stack.attacker.app("ssrf")
    readyz = httpx.get(f"{stack.url}/readyz").text
    assert '"checks"' in readyz  # the live server answers on loopback: the fetch would work
    for add in (
        f"ADD http://127.0.0.1:{stack.port}/readyz /readyz",
        f"ARG U=http://127.0.0.1:{stack.port}/readyz\nADD $U /readyz",
        "ADD http://169.254.169.254/latest/meta-data/ /meta",
    ):
        done = stack.attacker.deploy("ssrf", {"Dockerfile": f"FROM {PY}\n{add}\nRUN cat /readyz\n"})
        log = stack.attacker.log("ssrf", done["id"])
        assert '"checks"' not in log, f"the control plane's /readyz leaked into the build: {log[-1500:]}"
        assert done["status"] == "failed" and "Step 1/" not in log, (done, log[-2000:])
        assert "downloading from a URL with ADD is not allowed" in done["reason"] and "RUN curl" in done["reason"]
        assert done["image"] is None


GIT_URLS_TO_THE_HOST = [
    "https://localhost/app.git",
    "https://127.0.0.1/app.git",
    "https://[::1]/app.git",
    "https://[::ffff:127.0.0.1]/app.git",
    "https://2130706433/app.git",
    "https://169.254.169.254/app.git",
    "https://10.0.0.1/app.git",
    "ssh://127.0.0.1/srv/app.git",
    "git://127.0.0.1/app.git",
    "http://example.com/app.git",
]


@pytest.mark.parametrize("url", GIT_URLS_TO_THE_HOST)
def test_git_urls_that_reach_the_host_or_its_networks_are_refused_at_the_api(stack: Stack, url: str) -> None:
    app = f"git-{GIT_URLS_TO_THE_HOST.index(url)}"
    stack.attacker.app(app)
    r = stack.attacker.deploy_git(app, url)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert [e["field"] for e in r.json()["errors"]] == ["git.url"]
    assert stack.attacker.http.get(f"/v1/apps/{app}/deployments").json()["items"] == []


def test_a_file_url_to_a_repository_the_host_holds_is_refused(stack: Stack, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "host-secret", {"Dockerfile": f"FROM {PY}\nCOPY . /app\n", "secret.txt": "host-only"})
    stack.attacker.app("hostrepo")
    r = stack.attacker.deploy_git("hostrepo", f"file://{repo}")
    assert r.status_code == 422, r.text
    assert "only https:// repository URLs are allowed" in r.json()["detail"]
    assert stack.attacker.http.get("/v1/apps/hostrepo/deployments").json()["items"] == []


def test_a_host_that_rebinds_to_loopback_after_the_api_check_fails_the_deployment(stack: Stack, monkeypatch) -> None:
    from control.domain import git_sources

    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public for the API, loopback for the job
    monkeypatch.setattr(git_sources, "system_resolver", lambda host, port: next(answers))
    stack.attacker.app("rebind")
    r = stack.attacker.deploy_git("rebind", "https://rebind.moorage.test/app.git")
    assert r.status_code == 202, r.text
    done = stack.attacker.wait("rebind", r.json()["id"])
    assert done["status"] == "failed"
    assert "resolves to 127.0.0.1, an internal address" in done["reason"] and "MOORAGE_GIT_ALLOWED_NETWORKS" in done["reason"]


def test_git_fetches_only_from_the_address_that_was_checked(traefik, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """An operator allowing loopback and http: the clone goes to the pinned address, not
    to wherever git's own lookup would go (here: nowhere, the name does not exist)."""
    from control.domain import git_sources

    make_repo(tmp_path / "repos", "app", source(f"from-git-{RUN_ID}"))
    monkeypatch.setattr(
        git_sources, "system_resolver", lambda host, port: ["127.0.0.1"] if host == "git.moorage.test" else pytest.fail(host)
    )
    with (
        git_http_server(tmp_path / "repos") as git_port,
        _stack(traefik, tmp_path / "data", "g", git_allow_http=True, git_allowed_networks="127.0.0.0/8") as stack,
    ):
        _deploy_from_the_pinned_host(stack, traefik, git_port)


def test_a_file_url_under_a_prefix_the_operator_allows_is_cloned_built_and_served(traefik, tmp_path: Path) -> None:  # noqa: F811
    make_repo(tmp_path / "repos", "app", source(f"from-file-{RUN_ID}"))
    make_repo(tmp_path / "private", "other", {"Dockerfile": f"FROM {PY}\nCOPY . /app\n", "secret.txt": "host-only"})
    with _stack(traefik, tmp_path / "data", "f", git_file_prefixes=str(tmp_path / "repos")) as stack:
        stack.victim.app("out")
        escape = stack.victim.deploy_git("out", f"file://{tmp_path}/repos/../private/other.git")
        assert escape.status_code == 422 and "must lie under" in escape.json()["detail"], escape.text
        assert stack.victim.http.get("/v1/apps/out/deployments").json()["items"] == []
        stack.victim.app("web")
        r = stack.victim.deploy_git("web", f"file://{tmp_path}/repos/app.git")
        assert r.status_code == 202, r.text
        done = stack.victim.wait("web", r.json()["id"])
        log = stack.victim.log("web", done["id"])
        assert done["status"] == "running", (done, log[-3000:])
        served = httpx.get(traefik.url + "/", headers={"Host": f"web.{stack.victim.name}.apps.test"}, timeout=5)
        assert f"from-file-{RUN_ID}" in served.text


def _deploy_from_the_pinned_host(stack: Stack, traefik, git_port: int) -> None:  # noqa: F811
    stack.victim.app("web")
    r = stack.victim.deploy_git("web", f"http://git.moorage.test:{git_port}/app.git")
    assert r.status_code == 202, r.text
    done = stack.victim.wait("web", r.json()["id"])
    log = stack.victim.log("web", done["id"])
    assert done["status"] == "running", (done, log[-3000:])
    assert "git host git.moorage.test resolves to 127.0.0.1: allowed" in log
    served = httpx.get(traefik.url + "/", headers={"Host": f"web.{stack.victim.name}.apps.test"}, timeout=5)
    assert f"from-git-{RUN_ID}" in served.text


def _copy_step_cached(log: str) -> bool:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if " : COPY app.py /app/app.py" in line:
            return any("Using cache" in later for later in lines[i + 1 : i + 3])
    raise AssertionError(f"no COPY step in the log:\n{log[-3000:]}")


def test_identical_builds_of_two_tenants_share_no_cache_while_a_rebuild_keeps_its_own(stack: Stack) -> None:
    files = source(f"cache-probe-{RUN_ID}")  # the same Dockerfile and files for both tenants
    stack.victim.app("cached")
    stack.attacker.app("cached")
    first = stack.victim.deploy("cached", files)
    assert first["status"] == "running", first
    probe = stack.attacker.deploy("cached", files)
    probe_log = stack.attacker.log("cached", probe["id"])
    assert probe["status"] == "running", (probe, probe_log[-2000:])
    assert "Using cache" not in probe_log, probe_log[-3000:]
    again = stack.attacker.deploy("cached", files)
    again_log = stack.attacker.log("cached", again["id"])
    assert again["status"] == "running" and _copy_step_cached(again_log), again_log[-3000:]
    assert _copy_step_cached(stack.victim.log("cached", first["id"])) is False  # A's own first build: cold
