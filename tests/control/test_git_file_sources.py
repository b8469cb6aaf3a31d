"""file:// git sources: refused unless the operator names directories tenants may clone
from (``MOORAGE_GIT_FILE_PREFIXES``); a path is checked with '..' and symlinks resolved,
and git is handed the resolved path. Real repositories on disk, real git, the real API and
the real build job (its runtime the in-memory one: the image build is tested elsewhere)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.domain.errors import Invalid
from control.domain.git_sources import check_git_source, curl_resolve_entries
from control.settings import Settings, SettingsError
from tests.conftest import Caller
from tests.control.deploy_world import DOCKERFILE, DeployWorld, world_on
from tests.git_server import make_repo


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``repos/`` (the allowed prefix) with an app repository and a symlink out of it;
    ``outside/`` a repository beside it that no tenant may read."""
    repos, outside = tmp_path / "repos", tmp_path / "outside"
    app = make_repo(repos, "app", {"Dockerfile": DOCKERFILE, "app.py": "print('from file')\n"})
    secret = make_repo(outside, "secret", {"Dockerfile": DOCKERFILE, "secret.txt": "host only\n"})
    (repos / "escape.git").symlink_to(secret)  # a link inside the prefix to a repository outside it
    (repos / "inner.git").symlink_to(app)  # a link that stays inside
    sibling = make_repo(tmp_path / "repos-evil", "s", {"Dockerfile": DOCKERFILE})  # shares the prefix's spelling
    return {"repos": repos, "app": app, "secret": secret, "sibling": sibling, "tmp": tmp_path}


def _refused(url: str, prefixes: tuple[Path, ...]) -> str:
    with pytest.raises(Invalid) as caught:
        check_git_source(url, "main", allow_http=False, file_prefixes=prefixes)
    assert caught.value.extra["errors"][0]["field"] == "git.url"
    return caught.value.detail


def test_file_urls_are_refused_without_an_operator_prefix(layout: dict[str, Path]) -> None:
    detail = _refused(f"file://{layout['app']}", ())
    assert "only https:// repository URLs are allowed" in detail and "MOORAGE_GIT_FILE_PREFIXES" in detail


def test_a_path_under_a_prefix_is_accepted_resolved(layout: dict[str, Path]) -> None:
    roots = Settings(git_file_prefixes=f" {layout['repos']} ,/nonexistent").git_file_roots
    target = check_git_source(f"file://{layout['app']}", "main", allow_http=False, file_prefixes=roots)
    assert target.is_file and target.path == layout["app"].resolve() and curl_resolve_entries(target, []) == []
    inner = check_git_source(f"file://{layout['repos']}/inner.git", "main", allow_http=False, file_prefixes=roots)
    assert inner.path == layout["app"].resolve()  # git gets where the link leads, inside the prefix


@pytest.mark.parametrize(
    ("url_of", "why"),
    [
        (lambda p: f"file://{p['repos']}/../outside/secret.git", "must lie under"),
        (lambda p: f"file://{p['repos']}/app.git/../../outside/secret.git", "must lie under"),
        (lambda p: f"file://{p['repos']}/escape.git", "must lie under"),  # a symlink out of the prefix
        (lambda p: f"file://{p['sibling']}", "must lie under"),  # /x/repos-evil is not under /x/repos
        (lambda p: "file:///etc", "must lie under"),
        (lambda p: f"file://localhost{p['app']}", "no host"),
        (lambda p: f"file://{p['repos']}/%61pp.git", "%-escapes"),
        (lambda p: f"file://{p['app']}?x=1", "no host, query"),
        (lambda p: f"file://{p['repos']}/missing.git", "no repository at that path"),
    ],
)
def test_paths_outside_every_prefix_are_refused(layout: dict[str, Path], url_of, why: str) -> None:
    roots = Settings(git_file_prefixes=str(layout["repos"])).git_file_roots
    detail = _refused(url_of(layout), roots)
    assert why in detail
    assert "secret.git" not in detail  # neither the path nor where a link leads is told back


def test_a_prefix_that_is_itself_a_symlink_is_compared_resolved(layout: dict[str, Path]) -> None:
    (layout["tmp"] / "link-to-repos").symlink_to(layout["repos"])
    roots = Settings(git_file_prefixes=str(layout["tmp"] / "link-to-repos")).git_file_roots
    assert check_git_source(f"file://{layout['app']}", "main", allow_http=False, file_prefixes=roots).is_file


def test_prefixes_must_be_absolute() -> None:
    with pytest.raises(SettingsError, match="MOORAGE_GIT_FILE_PREFIXES must be absolute directories, got 'srv/git'"):
        Settings.from_env({"MOORAGE_GIT_FILE_PREFIXES": "/srv/ok,srv/git"})
    assert Settings().git_file_roots == ()


# -- through the API and the build job -------------------------------------------------------
WITH_PREFIX = pytest.mark.parametrize("settings", ["with-prefix"], indirect=True)  # tmp_path/repos allowed


@pytest.fixture
def settings(tmp_path: Path, migrated_database: Path, request: pytest.FixtureRequest) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(migrated_database, data_dir / "moorage.db")
    prefixes = str(tmp_path / "repos") if getattr(request, "param", None) == "with-prefix" else ""
    return Settings(data_dir=data_dir, base_domain="apps.test", job_workers=0, reconcile_interval_s=0, git_file_prefixes=prefixes)


def _git_deploy(tenant: Caller, url: str):
    tenant.post("/v1/apps", json={"name": "web"})
    return tenant.post("/v1/apps/web/deployments", json={"git": {"url": url, "ref": "main"}})


def _nothing_happened(tenant: Caller, settings: Settings) -> None:
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == []
    deployments = settings.data_dir / "deployments"
    assert not deployments.exists() or list(deployments.iterdir()) == []  # nothing fetched anywhere


def test_the_api_refuses_file_urls_by_default(tenant: Caller, settings: Settings, layout: dict[str, Path]) -> None:
    r = _git_deploy(tenant, f"file://{layout['app']}")
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert r.json()["code"] == "validation-failed" and r.json()["errors"][0]["field"] == "git.url" and r.json()["request_id"]
    _nothing_happened(tenant, settings)


@WITH_PREFIX
@pytest.mark.parametrize("path", ["{repos}/../outside/secret.git", "{repos}/escape.git"])
def test_the_api_refuses_escapes_from_the_prefix(tenant: Caller, settings: Settings, layout: dict[str, Path], path: str) -> None:
    r = _git_deploy(tenant, "file://" + path.format(repos=layout["repos"]))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "git.url", r.text
    assert "must lie under" in r.json()["detail"]
    _nothing_happened(tenant, settings)


@pytest.fixture
def world(settings: Settings) -> Iterator[DeployWorld]:
    yield from world_on(settings)


def _run_git(world: DeployWorld, url: str) -> str:
    deployment_id = world.deployments.new_id()
    world.deployments.create(world.tenant.id, world.app, deployment_id, "git", {"url": url, "ref": "main"})
    world.run_next()
    return deployment_id


@WITH_PREFIX
def test_an_allowed_repository_is_cloned_and_built(world: DeployWorld, layout: dict[str, Path]) -> None:
    deployment_id = _run_git(world, f"file://{layout['repos']}/inner.git")
    log = world.log(deployment_id)
    assert world.deployment(deployment_id).status == "running", log[-2000:]
    assert "the file:// repository lies under a directory the operator allows" in log
    assert world.release_of(deployment_id) is not None


@WITH_PREFIX
def test_the_job_checks_again_and_a_link_turned_outward_since_the_api_check_fetches_nothing(
    world: DeployWorld, layout: dict[str, Path]
) -> None:
    link = layout["repos"] / "moved.git"
    link.symlink_to(layout["secret"])  # accepted by the API while it pointed at app.git, say; now it leads out
    deployment_id = _run_git(world, f"file://{link}")
    done = world.deployment(deployment_id)
    assert done.status == "failed" and "must lie under" in (done.reason or "")
    assert not (world.deployments.workdir(deployment_id) / "src" / "secret.txt").exists()


def test_the_job_refuses_file_urls_once_the_operator_removed_the_prefix(world: DeployWorld, layout: dict[str, Path]) -> None:
    deployment_id = _run_git(world, f"file://{layout['app']}")
    done = world.deployment(deployment_id)
    assert done.status == "failed" and "MOORAGE_GIT_FILE_PREFIXES" in (done.reason or "")
