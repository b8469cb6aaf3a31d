"""Environments (sandboxes) through the API, their containers on the runtime port's fake:
create, lease and renew, exec (bounds, timeout, stdin, env, concurrency, cut off by a delete
or the lease), files, the reconciler's sweep, quotas and isolation.
tests/e2e/test_sandboxes.py runs them on Docker under gVisor."""

from __future__ import annotations

import gzip
import io
import json
import math
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar

from control.clock import utcnow
from control.domain.env import EnvValue
from control.jobs.environments import Sandboxes
from control.jobs.runtime_fake import InMemoryAppRuntime
from control.jobs.runtime_fake_environments import ExecScript, FakeExec
from control.settings import Settings
from control.store.models import EnvironmentRow
from tests.conftest import Caller
from tests.control.run_world import IMAGE, quiet

BASE = "moorage/python:3-bookworm"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return quiet(settings, environment_output_max_bytes=100, environment_lease_max_s=600, environment_lifetime_max_s=500)


@pytest.fixture
def fake(app: Litestar) -> InMemoryAppRuntime:
    runtime = InMemoryAppRuntime()
    app.state.services.environments.runtime = runtime
    return runtime


@pytest.fixture
def sandboxes(app: Litestar, fake: InMemoryAppRuntime) -> Sandboxes:
    found: Sandboxes = app.state.services.environments
    return found


def create(caller: Caller, **body: Any) -> dict[str, Any]:
    response = caller.post("/v1/environments", json={"image": BASE, **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def run(caller: Caller, env_id: str, command: list[str], **body: Any) -> dict[str, Any]:
    response = caller.post(f"/v1/environments/{env_id}/exec", json={"command": command, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def tar_gz(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def expire(app: Litestar, env_id: str) -> None:
    with app.state.services.db.write() as session:
        row = session.get(EnvironmentRow, env_id)
        assert row is not None
        row.lease_expires_at = utcnow() - timedelta(seconds=1)


# -- create, read, delete -------------------------------------------------------------------
def test_an_environment_starts_ready_from_a_platform_image_with_no_env_of_its_own(
    tenant: Caller, fake: InMemoryAppRuntime
) -> None:
    response = tenant.post("/v1/environments", json={"image": BASE, "cpu": 0.5, "memory_mb": 256, "lease_s": 120})
    assert response.status_code == 201, response.text
    env = response.json()
    assert response.headers["location"] == f"/v1/environments/{env['id']}"
    assert env["status"] == "ready" and env["image"] == BASE and env["cpu"] == 0.5 and env["memory_mb"] == 256
    started = fake.environment_of(env["id"])
    assert started is not None and started.spec.env == {} and started.spec.millicpus == 500 and started.spec.memory_mb == 256
    assert started.spec.tenant == "acme"
    assert tenant.get(f"/v1/environments/{env['id']}").json()["id"] == env["id"]
    assert [e["id"] for e in tenant.get("/v1/environments").json()["items"]] == [env["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "moorage/postgres:15"}, "image"),
        ({"image": "alpine:latest"}, "image"),
        ({}, "image"),
        ({"image": BASE, "from_app": "web"}, "image"),
        ({"image": BASE, "with_app_env": True}, "with_app_env"),
        ({"image": BASE, "lease_s": 601}, "lease_s"),
        ({"image": BASE, "cpu": 99}, "cpu"),
        ({"image": BASE, "memory_mb": 100_000}, "memory_mb"),
    ],
)
def test_a_create_outside_the_rules_is_422_naming_the_field_and_makes_nothing(
    tenant: Caller, fake: InMemoryAppRuntime, body: dict[str, Any], field: str
) -> None:
    response = tenant.post("/v1/environments", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert fake.environments == {} and tenant.get("/v1/environments").json()["items"] == []


def test_an_image_that_cannot_start_is_422_and_leaves_no_row(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    fake.environment_start_failure = "its `sleep infinity` ended"
    response = tenant.post("/v1/environments", json={"image": BASE})
    assert response.status_code == 422 and response.json()["code"] == "environment-start-failed"
    assert "sleep infinity" in response.json()["detail"]
    assert tenant.get("/v1/environments").json()["items"] == []


def test_from_app_needs_a_release_and_with_app_env_brings_its_vars(
    app: Litestar, tenant: Caller, fake: InMemoryAppRuntime
) -> None:
    services = app.state.services
    created = tenant.post("/v1/apps", json={"name": "web"}).json()
    response = tenant.post("/v1/environments", json={"from_app": "web"})
    assert response.status_code == 409 and response.json()["code"] == "no-release"
    release = services.deploys.releases.create(
        tenant_id=tenant.tenant_id,
        app_id=created["id"],
        deployment_id="dep_v1",
        image_id=IMAGE,
        image_tag="t",
        env_version=0,
        port=8080,
        health_check_path="/",
    )
    services.deploys.releases.make_current(release, [("c" * 64, "moorage-acme-web-dep_v1")])
    services.env_vars.set(tenant.tenant_id, created["id"], "DATABASE_URL", EnvValue("postgres://secret"))
    plain = create(tenant, image=None, from_app="web")
    assert plain["image"] == IMAGE and plain["from_app"] == created["id"] and plain["release_id"] == release.id
    started = fake.environment_of(plain["id"])
    assert started is not None and started.spec.env == {}
    with_env = create(tenant, image=None, from_app="web", with_app_env=True)
    started = fake.environment_of(with_env["id"])
    assert started is not None and started.spec.env == {"DATABASE_URL": "postgres://secret"}
    assert "postgres://secret" not in json.dumps(tenant.get(f"/v1/environments/{with_env['id']}").json())


def test_delete_removes_the_container_and_the_row(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    assert tenant.delete(f"/v1/environments/{env['id']}").status_code == 204
    assert fake.environments == {}
    assert tenant.get(f"/v1/environments/{env['id']}").status_code == 404
    assert tenant.delete(f"/v1/environments/{env['id']}").status_code == 404


# -- leases ---------------------------------------------------------------------------------
def test_renew_extends_from_now_up_to_the_lifetime_then_409(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant, lease_s=60)
    renewed = tenant.post(f"/v1/environments/{env['id']}/renew", json={"lease_s": 120})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["lease_expires_at"] > env["lease_expires_at"]
    again = tenant.post(f"/v1/environments/{env['id']}/renew", json={"lease_s": 600}).json()  # capped at the lifetime
    assert again["lease_expires_at"] == again["lifetime_ends_at"] == env["lifetime_ends_at"]
    refused = tenant.post(f"/v1/environments/{env['id']}/renew", json={"lease_s": 60})
    assert refused.status_code == 409 and refused.json()["code"] == "lifetime-reached"
    too_long = tenant.post(f"/v1/environments/{env['id']}/renew", json={"lease_s": 601})
    assert too_long.status_code == 422


def test_an_expired_environment_is_404_and_the_sweep_removes_it_with_an_audit_event(
    app: Litestar, tenant: Caller, fake: InMemoryAppRuntime, sandboxes: Sandboxes
) -> None:
    env, kept = create(tenant), create(tenant)
    expire(app, env["id"])
    assert tenant.post(f"/v1/environments/{env['id']}/exec", json={"command": ["true"]}).status_code == 404
    assert tenant.post(f"/v1/environments/{env['id']}/renew", json={}).status_code == 404
    removed = sandboxes.sweep()
    assert removed == [f"{env['id']} (lease ended)"]
    assert fake.environment_of(env["id"]) is None and fake.environment_of(kept["id"]) is not None
    assert tenant.get(f"/v1/environments/{env['id']}").status_code == 404
    events = app.state.services.audit.list(tenant_id=tenant.tenant_id, limit=200, cursor=None).items
    assert any(e.action == "environment.expired" and e.target.endswith(env["id"]) for e in events)


def test_the_sweep_removes_containers_with_no_row_and_creates_that_never_finished(
    app: Litestar, tenant: Caller, fake: InMemoryAppRuntime, sandboxes: Sandboxes
) -> None:
    env = create(tenant)
    with app.state.services.db.write() as session:  # a crash between the container start and its commit
        session.delete(session.get(EnvironmentRow, env["id"]))
    stuck = create(tenant)
    with app.state.services.db.write() as session:
        row = session.get(EnvironmentRow, stuck["id"])
        assert row is not None
        row.status, row.created_at = "starting", utcnow() - timedelta(hours=1)
    removed = sandboxes.sweep()
    assert sorted(removed) == sorted([f"{stuck['id']} (its create never finished)", f"moorage-{env['id']} (no environment)"])
    assert fake.environments == {}


def test_the_reconciler_pass_runs_the_sweep(app: Litestar, tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    expire(app, env["id"])
    reconciler = app.state.services.deploys.reconciler
    sweep = reconciler._sweeps["environments"]
    assert sweep.__self__ is app.state.services.environments  # type: ignore[attr-defined]
    assert any(env["id"] in action for action in sweep())


# -- exec -----------------------------------------------------------------------------------
def test_exec_returns_exit_code_output_and_passes_stdin_env_and_workdir(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(stdout=b"out:" + (call.stdin or b""), stderr=b"warn", exit_code=3)
    result = run(tenant, env["id"], ["pytest", "-q"], stdin="hello", env={"CI": "1"}, workdir="/workspace/app")
    assert result == {
        "exit_code": 3,
        "stdout": "out:hello",
        "stderr": "warn",
        "truncated": False,
        "timed_out": False,
        "duration_ms": result["duration_ms"],
        "reason": None,
    }
    container = fake.environment_of(env["id"])
    assert container is not None
    call = container.execs[-1]
    assert call.command == ("pytest", "-q") and call.env == {"CI": "1"} and call.workdir == "/workspace/app"


def test_output_past_the_bound_is_cut_and_marked(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(stdout=b"x" * 500, stderr=b"short")
    result = run(tenant, env["id"], ["yes"])
    assert result["truncated"] is True
    assert result["stdout"] == "x" * 100 + "\n[stdout cut at 100 bytes]\n" and result["stderr"] == "short"


def test_exec_past_its_timeout_is_killed_and_says_so(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(duration_s=math.inf)
    result = run(tenant, env["id"], ["sleep", "100"], timeout_s=1)
    assert result["timed_out"] is True and result["exit_code"] is None and "timeout of 1s" in result["reason"]
    assert 900 <= result["duration_ms"] < 5000


def test_ten_concurrent_execs_in_one_environment_run_at_once(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    all_in = threading.Barrier(10, timeout=30)  # each waits for the other nine: broken unless all ten run at once

    def script(call: FakeExec) -> ExecScript:
        all_in.wait()
        return ExecScript(stdout=call.command[1].encode(), duration_s=0.5)

    fake.on_exec = script
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: run(tenant, env["id"], ["echo", str(i)]), range(10)))
    assert [r["stdout"] for r in results] == [str(i) for i in range(10)]
    assert fake.max_parallel_execs == 10


def _exec_in_background(tenant: Caller, env_id: str) -> tuple[threading.Thread, list[dict[str, Any]]]:
    answers: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(run(tenant, env_id, ["sleep", "1000"])))
    thread.start()
    return thread, answers


def test_an_exec_cut_by_a_delete_ends_with_that_reason(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(duration_s=math.inf)
    thread, answers = _exec_in_background(tenant, env["id"])
    time.sleep(0.3)
    assert tenant.delete(f"/v1/environments/{env['id']}").status_code == 204
    thread.join(10)
    assert answers and answers[0]["exit_code"] is None and "deleted" in answers[0]["reason"]


def test_an_exec_cut_by_the_lease_running_out_ends_with_that_reason(
    app: Litestar, tenant: Caller, fake: InMemoryAppRuntime
) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(duration_s=math.inf)
    thread, answers = _exec_in_background(tenant, env["id"])
    time.sleep(0.3)
    expire(app, env["id"])
    thread.join(10)
    assert answers and answers[0]["exit_code"] is None and "lease ran out" in answers[0]["reason"]


def test_exec_streams_as_sse_ending_with_the_exit(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    fake.on_exec = lambda call: ExecScript(stdout=b"line 1\nline 2\n", stderr=b"oops", exit_code=1)
    response = tenant.post(f"/v1/environments/{env['id']}/exec?stream=true", json={"command": ["make"]})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\r\n\r\n") if block.strip() and not block.startswith(":")]
    parsed = [dict(line.split(": ", 1) for line in block.replace("\r\n", "\n").splitlines() if ": " in line) for block in events]
    kinds = [e.get("event") for e in parsed]
    assert kinds[-1] == "exit" and {"stdout", "stderr"} <= set(kinds)
    assert json.loads(parsed[-1]["data"])["exit_code"] == 1
    stdout = "".join(json.loads(e["data"]) for e in parsed if e.get("event") == "stdout")
    assert stdout == "line 1\nline 2\n"


@pytest.mark.parametrize("body", [{"command": []}, {"command": ["x"], "timeout_s": 99999}, {"command": ["x"], "workdir": "rel"}])
def test_a_bad_exec_is_422(tenant: Caller, fake: InMemoryAppRuntime, body: dict[str, Any]) -> None:
    env = create(tenant)
    assert tenant.post(f"/v1/environments/{env['id']}/exec", json=body).status_code == 422
    assert tenant.post(f"/v1/environments/{env['id']}/exec?stream=true", json=body).status_code == 422


# -- files ----------------------------------------------------------------------------------
def test_push_then_pull_round_trips_a_tree(tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    body = tar_gz({"app/main.py": b"print(1)\n", "app/tests/test_x.py": b"def test(): pass\n"})
    pushed = tenant.request(
        "PUT", f"/v1/environments/{env['id']}/files?path=/workspace", content=body, headers={"content-type": "application/gzip"}
    )
    assert pushed.status_code == 200, pushed.text
    container = fake.environment_of(env["id"])
    assert container is not None and container.files["/workspace/app/main.py"] == b"print(1)\n"
    pulled = tenant.get(f"/v1/environments/{env['id']}/files?path=/workspace/app")
    assert pulled.status_code == 200 and pulled.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(pulled.content), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["app/main.py", "app/tests/test_x.py"]
    missing = tenant.get(f"/v1/environments/{env['id']}/files?path=/nowhere")
    assert missing.status_code == 404 and missing.json()["code"] == "path-not-found"


@pytest.mark.parametrize(
    "archive",
    [
        tar_gz({"../escape.txt": b"x"}),
        tar_gz({"/etc/passwd": b"x"}),
        tar_gz({}, links={"link": "/etc/shadow"}),
        gzip.compress(b"not a tar" * 10),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_written(tenant: Caller, fake: InMemoryAppRuntime, archive: bytes) -> None:
    env = create(tenant)
    response = tenant.request(
        "PUT", f"/v1/environments/{env['id']}/files", content=archive, headers={"content-type": "application/gzip"}
    )
    assert response.status_code == 422 and response.json()["code"] == "archive-rejected", response.text
    container = fake.environment_of(env["id"])
    assert container is not None and container.files == {}


def test_a_push_that_is_not_gzip_is_415_and_one_too_large_is_413(app: Litestar, tenant: Caller, fake: InMemoryAppRuntime) -> None:
    env = create(tenant)
    url = f"/v1/environments/{env['id']}/files"
    assert tenant.request("PUT", url, content=b"{}", headers={"content-type": "application/json"}).status_code == 415
    app.state.services.environments.environments.config = _with(app, upload_max_bytes=10)
    big = tenant.request("PUT", url, content=tar_gz({"a": b"x" * 1000}), headers={"content-type": "application/gzip"})
    assert big.status_code == 413


def _with(app: Litestar, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(app.state.services.environments.environments.config, **changes)


# -- quotas and isolation -------------------------------------------------------------------
def test_environments_count_against_the_compute_quotas(operator: Caller, tenant: Caller, fake: InMemoryAppRuntime) -> None:
    put = operator.request(
        "PUT", f"/v1/tenants/{tenant.tenant_id}/compute-limits", json={"max_environments": 2, "max_cpu": 2, "max_memory_mb": 4096}
    )
    assert put.status_code == 200, put.text
    create(tenant, cpu=1)
    too_much_cpu = tenant.post("/v1/environments", json={"image": BASE, "cpu": 1.5})
    assert too_much_cpu.status_code == 422 and too_much_cpu.json()["code"] == "quota-exceeded"
    assert "max_cpu" in too_much_cpu.json()["detail"]
    create(tenant, cpu=1)
    third = tenant.post("/v1/environments", json={"image": BASE, "cpu": 0.1})
    assert third.status_code == 422 and "max_environments" in third.json()["detail"]
    limits = operator.get(f"/v1/tenants/{tenant.tenant_id}/compute-limits").json()
    assert limits["max_environments"] == 2 and limits["usage"]["environments"] == 2
    assert limits["usage"]["environment_cpu"] == 2.0 and limits["usage"]["cpu"] == 2.0
    assert len(fake.environments) == 2


def test_another_tenant_gets_404_for_everything_of_an_environment(
    tenant: Caller, new_tenant: Any, fake: InMemoryAppRuntime
) -> None:
    env = create(tenant)
    other = new_tenant("globex", ["admin"])
    base = f"/v1/environments/{env['id']}"
    answers = [
        other.get(base),
        other.delete(base),
        other.post(f"{base}/renew", json={}),
        other.post(f"{base}/exec", json={"command": ["id"]}),
        other.post(f"{base}/exec?stream=true", json={"command": ["id"]}),
        other.get(f"{base}/files"),
        other.request("PUT", f"{base}/files", content=tar_gz({"a": b"x"}), headers={"content-type": "application/gzip"}),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert other.get("/v1/environments").json()["items"] == []
    container = fake.environment_of(env["id"])
    assert container is not None and container.execs == [] and container.files == {}


def test_fake_exec_sees_the_files(fake: InMemoryAppRuntime, tenant: Caller) -> None:
    """The fake's exec hook gets the environment's files, so a test can script a test run over them."""
    env = create(tenant)
    seen: list[FakeExec] = []
    fake.on_exec = lambda call: seen.append(call) or ExecScript()  # type: ignore[func-returns-value]
    tenant.request(
        "PUT",
        f"/v1/environments/{env['id']}/files",
        content=tar_gz({"a.txt": b"1"}),
        headers={"content-type": "application/gzip"},
    )
    run(tenant, env["id"], ["cat", "a.txt"])
    assert seen[-1].files == {"/workspace/a.txt": b"1"}


@pytest.fixture(autouse=True)
def _no_leftovers(fake: InMemoryAppRuntime) -> Iterator[None]:
    yield


def test_environments_cpu_counts_against_an_apps_first_deploy(operator: Caller, tenant: Caller, fake: InMemoryAppRuntime) -> None:
    assert operator.request("PUT", f"/v1/tenants/{tenant.tenant_id}/compute-limits", json={"max_cpu": 1}).status_code == 200
    create(tenant, cpu=0.8)
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    refused = tenant.post("/v1/apps/web/deployments", json={"git": {"url": "https://example.com/r.git", "ref": "main"}})
    assert refused.status_code == 422 and refused.json()["code"] == "quota-exceeded", refused.text
    assert "max_cpu" in refused.json()["detail"] and "environment" in refused.json()["detail"]
