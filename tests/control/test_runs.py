"""One-off runs through the API, their job on the runtime port's fake: exit codes, output
(bounded, streamed), timeouts, cancels, the sandboxed container's env, what happens when a
worker dies mid-run, isolation, retention. tests/e2e/test_runs.py runs them on Docker."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar

from control.domain.runs import RUN_JOB, RunStatus
from control.ids import new_id
from control.jobs.docker_runs import MAX_LINE_BYTES, output_lines
from control.jobs.runs import RESTARTED, run_container_name
from control.jobs.runtime_fake import FakeContainer
from control.settings import Settings
from control.store.repositories.volumes import VolumeRepository
from runtime.resilience import CircuitOpenError
from tests.conftest import Caller
from tests.control.run_world import RunWorld, quiet, run_world


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return quiet(settings, run_output_max_bytes=1000, run_timeout_max_s=120)


@pytest.fixture
def world(app: Litestar, tenant: Caller) -> Iterator[RunWorld]:
    yield from run_world(app.state.services, tenant)


def _log(world: RunWorld, run_id: str) -> str:
    response = world.caller.get(f"/v1/apps/web/runs/{run_id}/logs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


# -- creating -------------------------------------------------------------------------------
def test_an_app_never_deployed_has_nothing_to_run_409_no_release(world: RunWorld) -> None:
    response = world.caller.post("/v1/apps/web/runs", json={"command": ["true"]})
    assert response.status_code == 409 and response.json()["code"] == "no-release"
    assert "deploy it first" in response.json()["detail"]


def test_a_run_is_queued_as_a_job_of_the_current_release(world: RunWorld) -> None:
    world.release("dep_old")
    current = world.release("dep_new")
    response = world.caller.post("/v1/apps/web/runs", json={"command": ["python", "manage.py", "migrate"]})
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["location"] == f"/v1/apps/{world.app_id}/runs/{run['id']}"
    assert run["status"] == "queued" and run["trigger"] == "api" and run["release"] == current.name == "v2"
    assert (
        run["command"] == ["python", "manage.py", "migrate"] and run["timeout_s"] == 120
    )  # the default (600), held to the maximum
    assert run["exit_code"] is None and run["started_at"] is None and run["logs_url"].endswith(f"/runs/{run['id']}/logs")
    job = world.services.deploys.queue.claim("peek")
    assert job is not None and job.kind == RUN_JOB and job.subject_id == run["id"] and job.tenant_id == world.tenant_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": []}, "command"),
        ({"command": [""]}, "command"),
        ({"command": ["echo", "a\x00b"]}, "command"),
        ({"command": ["x" * 5000]}, "command"),
        ({"command": "echo hi"}, "command"),
        ({"command": ["true"], "timeout_s": 0}, "timeout_s"),
        ({"command": ["true"], "timeout_s": 121}, "timeout_s"),  # over this server's MOORAGE_RUN_TIMEOUT_MAX_S
        ({"command": ["true"], "other": 1}, "other"),
    ],
)
def test_a_bad_run_request_is_422_naming_the_field(world: RunWorld, body: dict[str, object], field: str) -> None:
    world.release()
    response = world.caller.post("/v1/apps/web/runs", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation-failed" and field in json.dumps(problem), problem


def test_a_retried_post_with_its_idempotency_key_makes_one_run(world: RunWorld) -> None:
    world.release()
    headers = {"Idempotency-Key": "run-once-1"}
    first = world.caller.post("/v1/apps/web/runs", json={"command": ["true"]}, headers=headers)
    again = world.caller.post("/v1/apps/web/runs", json={"command": ["true"]}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == first.json()["id"]
    assert len(world.caller.get("/v1/apps/web/runs").json()["items"]) == 1


# -- running --------------------------------------------------------------------------------
def test_a_run_gets_the_apps_env_and_links_and_ends_with_its_exit_code_and_output(world: RunWorld) -> None:
    release = world.release()
    assert world.caller.request("PUT", "/v1/apps/web/env/GREETING", json={"value": "hello"}).status_code == 200
    database = world.caller.post("/v1/databases", json={"name": "main", "engine": "postgres"}).json()
    world.services.databases.databases.mark(database["id"], "available", expect=("provisioning",))
    world.services.deploys.queue.cancel_queued(database["id"])  # as if provisioned: no job of this test's kind
    assert world.caller.post("/v1/apps/web/links", json={"database": "main"}).status_code == 201
    world.runtime.script_runs(output=["one", "two"], exit_code=0)
    run = world.post_run(["sh", "-c", "echo one; echo two"])
    world.run_queued()
    done = world.get_run(run["id"])
    assert done["status"] == "succeeded" and done["exit_code"] == 0 and done["reason"] is None
    assert done["started_at"] and done["finished_at"] and done["output_truncated"] is False
    assert _log(world, run["id"]) == "one\ntwo\n" and done["output_bytes"] == len("one\ntwo\n")
    [started] = world.runtime.runs
    assert started.command == ("sh", "-c", "echo one; echo two") and started.image == release.image_id
    url = started.env.pop("DATABASE_URL")  # linked as a deploy links it
    assert url.startswith("postgres") and "db-main" in url
    assert started.env == {"GREETING": "hello", "PORT": "8080"} and started.tenant == "acme" and started.app == "web"
    assert started.name == run_container_name(run["id"]) and started.release == "v1"
    assert world.runtime.owned_runs() == []  # its container is gone


def test_a_failing_command_ends_failed_with_its_own_exit_code(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(output=["Traceback: boom"], exit_code=3)
    run = world.post_run(["python", "-c", "raise SystemExit(3)"])
    world.run_queued()
    done = world.get_run(run["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 3) and "exited with code 3" in done["reason"]
    assert _log(world, run["id"]) == "Traceback: boom\n"


def test_output_past_the_bound_is_cut_and_the_log_says_where(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(output=[f"line {i:03d} " + "x" * 40 for i in range(100)])  # ~5 KB, bound 1000 bytes
    run = world.post_run(["seq", "100"])
    world.run_queued()
    done = world.get_run(run["id"])
    log = _log(world, run["id"])
    assert done["status"] == "succeeded" and done["output_truncated"] is True and done["output_bytes"] == 1000
    assert log.startswith("line 000 ") and log.endswith("\n[output cut at 1000 bytes]\n")
    assert len(log.encode()) <= 1000 + len("\n[output cut at 1000 bytes]\n") and "line 099" not in log


def test_a_run_past_its_timeout_is_killed_and_ends_timed_out(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(output=["working"], duration_s=math.inf)
    run = world.post_run(["sleep", "infinity"], timeout_s=1)
    started = time.monotonic()
    world.run_queued()
    assert time.monotonic() - started < 5
    done = world.get_run(run["id"])
    assert done["status"] == "timed_out" and done["exit_code"] is None and "timeout of 1s" in done["reason"]
    assert _log(world, run["id"]) == "working\n" and world.runtime.owned_runs() == []


def test_cancelling_a_queued_run_ends_it_at_once(world: RunWorld) -> None:
    world.release()
    run = world.post_run(["true"])
    response = world.caller.post(f"/v1/apps/web/runs/{run['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert response.json()["reason"] == "cancelled before it started"
    assert world.services.deploys.queue.claim("peek") is None  # its job was withdrawn
    again = world.caller.post(f"/v1/apps/web/runs/{run['id']}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "run-finished"


def test_cancelling_a_running_run_kills_its_container(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(duration_s=math.inf)
    run = world.post_run(["sleep", "infinity"], timeout_s=60)
    world.start_workers()
    world.wait_for(run["id"], lambda r: r["status"] == "running" and bool(world.runtime.owned_runs()))
    asked = time.monotonic()
    response = world.caller.post(f"/v1/apps/web/runs/{run['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    done = world.wait_ended(run["id"])
    assert done["status"] == "cancelled" and done["exit_code"] is None and time.monotonic() - asked < 3
    assert world.runtime.owned_runs() == []


def test_the_log_streams_over_sse_and_ends_with_the_runs_status(world: RunWorld) -> None:
    world.release()
    world.runtime.script_runs(output=["first", "second"], exit_code=7)
    run = world.post_run(["sh", "-c", "exit 7"])
    world.start_workers()
    response = world.caller.get(f"/v1/apps/web/runs/{run['id']}/logs", params={"follow": "true"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    text = response.text.replace("\r\n", "\n")
    events = [block for block in text.split("\n\n") if block.strip() and not block.startswith(":")]
    assert events[:2] == ["event: log\ndata: first", "event: log\ndata: second"]
    kind, data = events[-1].split("\n")
    assert kind == "event: status" and json.loads(data.removeprefix("data: ")) == {
        "status": "failed",
        "reason": "the command exited with code 7",
        "exit_code": 7,
        "output_truncated": False,
    }


# -- workers that die, dependencies that are down -------------------------------------------
def test_a_run_that_was_running_when_its_worker_died_is_not_run_again(world: RunWorld) -> None:
    world.release()
    run = world.post_run(["python", "manage.py", "migrate"])
    queue = world.services.deploys.queue
    first = queue.claim("dead-worker")
    assert first is not None
    world.services.runs.runs.start(run["id"])  # the first attempt started the command, then its process died
    world.runtime.run_containers["leftover"] = FakeContainer(
        "leftover", run_container_name(run["id"]), "acme", "web", "v1", "img", {}, "10.89.0.9"
    )
    assert queue.reclaim_running()  # the restarted server takes the job back
    world.run_queued()
    done = world.get_run(run["id"])
    assert done["status"] == "failed" and done["reason"] == RESTARTED
    assert world.runtime.runs == [] and world.runtime.run_containers == {}  # never run twice; the leftover removed


def test_docker_down_before_the_command_starts_puts_the_run_back_in_the_queue(world: RunWorld) -> None:
    world.release()
    run = world.post_run(["true"])

    def down() -> None:
        raise CircuitOpenError("docker", 1.0)

    world.runtime.before("image_exists", down)
    world.run_queued()
    assert world.get_run(run["id"])["status"] == "queued"
    job = world.services.deploys.queue.get(next(iter(_jobs_of(world, run["id"]))))
    assert job is not None and job.state == "queued" and job.attempts == 0  # an outage uses no attempt


def _jobs_of(world: RunWorld, run_id: str) -> list[str]:
    from sqlalchemy import text

    with world.services.db.read() as session:
        return list(session.execute(text("SELECT id FROM jobs WHERE subject_id = :s"), {"s": run_id}).scalars())


def test_a_run_whose_image_is_gone_fails_saying_what_to_do(world: RunWorld) -> None:
    world.release()
    run = world.post_run(["true"])
    world.runtime.images.clear()
    world.run_queued()
    done = world.get_run(run["id"])
    assert done["status"] == "failed" and "deploy again" in done["reason"] and world.runtime.runs == []


def test_the_reconciler_sweep_removes_run_containers_whose_run_has_ended(world: RunWorld) -> None:
    world.release()
    live = world.post_run(["true"])
    world.services.runs.runs.start(live["id"])
    for name in (run_container_name(live["id"]), run_container_name("run_gone")):
        world.runtime.run_containers[name] = FakeContainer(name, name, "acme", "web", "v1", "img", {}, "10.89.0.9")
    assert world.job.remove_orphan_containers() == [run_container_name("run_gone")]
    assert list(world.runtime.run_containers) == [run_container_name(live["id"])]


# -- reading --------------------------------------------------------------------------------
def test_runs_are_listed_newest_first_a_page_at_a_time(world: RunWorld) -> None:
    world.release()
    made = [world.post_run(["echo", str(i)])["id"] for i in range(3)]
    page = world.caller.get("/v1/apps/web/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page["items"]] == made[::-1][:2] and page["next_cursor"]
    rest = world.caller.get("/v1/apps/web/runs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [r["id"] for r in rest["items"]] == [made[0]] and rest["next_cursor"] is None
    assert world.caller.get("/v1/apps/web/runs", params={"cron": "nightly"}).json()["items"] == []


def test_another_tenants_runs_are_404(world: RunWorld, new_tenant) -> None:  # type: ignore[no-untyped-def]
    world.release()
    run = world.post_run(["true"])
    other: Caller = new_tenant("other", ["admin"])
    assert other.post("/v1/apps", json={"name": "web"}).status_code == 201  # a same-named app of its own
    for method, path in [
        ("GET", f"/v1/apps/web/runs/{run['id']}"),
        ("GET", f"/v1/apps/{world.app_id}/runs/{run['id']}"),
        ("GET", f"/v1/apps/web/runs/{run['id']}/logs"),
        ("POST", f"/v1/apps/web/runs/{run['id']}/cancel"),
        ("POST", f"/v1/apps/{world.app_id}/runs"),
        ("GET", f"/v1/apps/{world.app_id}/runs"),
    ]:
        response = other.request(method, path, json={"command": ["true"]} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.text)
    assert other.get("/v1/apps/web/runs").json()["items"] == []


# -- retention ------------------------------------------------------------------------------
def test_the_retention_sweep_keeps_each_apps_newest_finished_runs_and_their_logs(world: RunWorld) -> None:
    world.release()
    runs = world.services.runs.runs
    made = [world.post_run(["true"])["id"] for _ in range(4)]
    for run_id in made[:3]:
        runs.start(run_id)
        runs.finish(run_id, RunStatus.SUCCEEDED, exit_code=0)
    stray = runs.root / "run_01strayfolderxxxxxxxxxxxxx"
    stray.mkdir(parents=True)
    os.utime(stray, (time.time() - 7200, time.time() - 7200))
    assert runs.prune(keep_per_app=1) == 2
    left = [r["id"] for r in world.caller.get("/v1/apps/web/runs").json()["items"]]
    assert left == [made[3], made[2]]  # the queued one is never pruned; of the finished, the newest
    assert not Path(runs.log_path(made[0])).exists() and Path(runs.log_path(made[3])).exists()
    assert not stray.exists()


def test_output_is_split_into_lines_and_a_line_without_end_comes_in_pieces() -> None:
    chunks = [b"one\ntw", b"o\n", b"x" * (MAX_LINE_BYTES + 5), b"\nlast"]
    assert list(output_lines(iter(chunks))) == ["one", "two", "x" * MAX_LINE_BYTES, "xxxxx", "last"]


# -- the app's volumes ----------------------------------------------------------------------
def _volume(world: RunWorld, name: str, path: str) -> str:
    """A volume of the app as the API records it (its storage is the runtime's business)."""
    volume_id = new_id("vol")
    with world.services.db.write() as session:
        VolumeRepository(session, world.tenant_id).add(
            id=volume_id, app_id=world.app_id, name=name, mount_path=path, size_mb=1, quota="measured", status="ready"
        )
    return volume_id


@pytest.mark.parametrize(
    ("asked", "mounted", "read_only"),
    [({}, True, True), ({"volume_access": "read-write"}, True, False), ({"volume_access": "none"}, False, True)],
)
def test_a_run_mounts_the_apps_volumes_read_only_unless_asked(
    world: RunWorld, asked: dict[str, str], mounted: bool, read_only: bool
) -> None:
    world.release()
    data = _volume(world, "data", "/app/instance")
    run = world.post_run(["flask", "--app", "flaskr", "init-db"], **asked)
    assert run["volume_access"] == asked.get("volume_access", "read-only")
    world.run_queued()
    [started] = world.runtime.runs
    assert [(m.volume_id, m.mount_path) for m in started.mounts] == ([(data, "/app/instance")] if mounted else [])
    assert started.read_only is read_only


def test_a_run_asking_for_an_unknown_volume_mode_is_422_and_queues_nothing(world: RunWorld) -> None:
    world.release()
    r = world.caller.post("/v1/apps/web/runs", json={"command": ["true"], "volume_access": "sometimes"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert world.caller.get("/v1/apps/web/runs").json()["items"] == []
