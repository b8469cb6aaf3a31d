"""The deployment state machine and the deployment service's rules (no Docker needed)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from control.domain.deployments import (
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    Status,
    check_transition,
)
from control.settings import Settings
from tests.conftest import Caller


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The placeholder repository lives on loopback (nothing listens on port 9): allowed here.
    return settings.with_overrides(git_allowed_networks="127.0.0.0/8")


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_transitions_follow_the_table(current: Status, target: Status) -> None:
    if target in TRANSITIONS[current]:
        assert check_transition(current, target) is target
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, target)


def test_terminal_states_are_final_and_the_happy_path_exists() -> None:
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    path = [Status.QUEUED, Status.BUILDING, Status.RELEASING, Status.RUNNING]
    assert all(b in TRANSITIONS[a] for a, b in itertools.pairwise(path))
    assert Status.RELEASING in TRANSITIONS[Status.QUEUED]  # a rollback skips the build


def _wait_terminal(caller: Caller, app: str, dep: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = caller.get(f"/v1/apps/{app}/deployments/{dep}").json()
        if body["status"] in {"running", "failed", "cancelled"}:
            return body
        time.sleep(0.1)
    raise AssertionError(f"deployment {dep} never finished: {body}")


def test_git_deploy_of_a_missing_repo_fails_with_a_reason(tenant: Caller) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    r = tenant.post("/v1/apps/web/deployments", json={"git": {"url": "https://127.0.0.1:9/nonexistent/repo.git", "ref": "main"}})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/apps/{r.json()['app_id']}/deployments/{r.json()['id']}"
    assert r.json()["status"] == "queued" and r.json()["source"] == {
        "kind": "git",
        "url": "https://127.0.0.1:9/nonexistent/repo.git",
        "ref": "main",
    }
    body = _wait_terminal(tenant, "web", r.json()["id"])
    assert body["status"] == "failed" and "git could not fetch" in body["reason"]
    assert [t["status"] for t in body["transitions"]] == ["queued", "building", "failed"]
    assert all(t["at"] for t in body["transitions"])
    log = tenant.get(f"/v1/apps/web/deployments/{body['id']}/logs")
    assert log.status_code == 200 and "cloning https://127.0.0.1:9/nonexistent/repo.git" in log.text
    streamed = tenant.get(f"/v1/apps/web/deployments/{body['id']}/logs", params={"follow": "true"}).text.replace("\r\n", "\n")
    assert "event: log\ndata: [moorage " in streamed and "cloning https://127.0.0.1:9" in streamed
    last = streamed.strip().split("\n\n")[-1]
    assert last == "event: status\ndata: " + json.dumps({"status": "failed", "reason": body["reason"], "release": None})
    listed = tenant.get("/v1/apps/web/deployments").json()["items"]
    assert [d["id"] for d in listed] == [body["id"]]


@pytest.mark.parametrize(
    ("git", "field"),
    [
        ({"url": "ssh://host/repo.git", "ref": "main"}, "git.url"),
        ({"url": "file:///srv/repo.git", "ref": "main"}, "git.url"),
        ({"url": "git://host/repo.git", "ref": "main"}, "git.url"),
        ({"url": "http://host/repo.git", "ref": "main"}, "git.url"),
        ({"url": "https://user:token@host/repo.git", "ref": "main"}, "git.url"),
        ({"url": "https://host/repo.git", "ref": "--upload-pack=evil"}, "git.ref"),
    ],
)
def test_git_sources_other_than_https_are_refused(tenant: Caller, git: dict, field: str) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    r = tenant.post("/v1/apps/web/deployments", json={"git": git})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]]
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == []


def test_cancel_a_queued_deployment_and_a_finished_one(app, tenant: Caller) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    services = app.state.services
    services.deploys.workers.stop()  # keep it queued
    r = tenant.post("/v1/apps/web/deployments", json={"git": {"url": "https://127.0.0.1:9/nowhere.git", "ref": "main"}})
    dep = r.json()["id"]
    cancelled = tenant.post(f"/v1/apps/web/deployments/{dep}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["reason"] == "cancelled before it started"
    again = tenant.post(f"/v1/apps/web/deployments/{dep}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "deployment-finished"
    assert services.deploys.queue.claim("w") is None  # its job was cancelled too


def test_wrong_content_type_and_rollback_without_releases(tenant: Caller) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    r = tenant.post("/v1/apps/web/deployments", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported-media-type"
    r = tenant.post("/v1/apps/web/rollback", json={"release": "v1"})
    assert r.status_code == 404
    r = tenant.post("/v1/apps/web/rollback", json={"release": "latest"})
    assert r.status_code == 422
    assert tenant.get("/v1/apps/web/releases").json() == {"items": [], "next_cursor": None}
    r = tenant.get("/v1/apps/web/logs")
    assert r.status_code == 409 and r.json()["code"] == "app-not-running"
