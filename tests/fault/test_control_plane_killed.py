"""SIGKILL of the control plane (a real ``moorage serve`` process), then a restart on the
same SQLite file, with the production leases (30 s per job, 60 s per Idempotency-Key): the
restarted server is the only one on the file, so it takes back the dead process's leases at
once instead of waiting them out.

- mid-build: the deployment goes live within 10 s of the restart (or ends ``failed`` with a
  reason), never stuck; exactly one app container and no build container remain; and a late
  writer holding the dead process's job lease can change nothing;
- mid idempotent POST, many times at spread-out moments and at the moment its answer is
  committed: every retry with the same key ends in the first attempt's answer, or in a
  fresh run when the first left nothing; never a second deployment. The request's writes
  and its stored answer are one transaction, so no moment shows one without the other. A
  retry is answered (run or replayed) within 5 s of the server answering again."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import httpx
import pytest

from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import TERMINAL, cleanup_tenant
from tests.fault.serve_process import ServeProcess
from tests.runtime.helpers import RUN_ID

JOB_LEASE_S = 30  # production's: a restart must not wait it out
IDEMPOTENCY_LEASE_S = 60
LIVE_AFTER_RESTART_S = 10
RETRY_ANSWERED_S = 5


@pytest.fixture
def server(tmp_path: Path, traefik: TraefikProcess) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path / "data", traefik, job_lease_s=JOB_LEASE_S)
    yield srv
    srv.kill()


@pytest.fixture
def api_server(tmp_path: Path, traefik: TraefikProcess) -> Iterator[ServeProcess]:
    """No job workers (deployments stay queued: only the API is under test)."""
    srv = ServeProcess(tmp_path / "data", traefik, idempotency_lease_s=IDEMPOTENCY_LEASE_S, job_workers=0)
    yield srv
    srv.kill()


def _tenant(api: httpx.Client, operator: dict[str, str], name: str) -> dict[str, str]:
    tenant = api.post("/v1/tenants", json={"name": name}, headers=operator).json()
    token = api.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}, headers=operator).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_sigkill_mid_build_then_restart_never_leaves_it_stuck(server: ServeProcess) -> None:
    tenant_name = f"crash-{RUN_ID}"
    operator = server.bootstrap()
    server.start()
    try:
        api = httpx.Client(base_url=server.url, timeout=30)
        auth = _tenant(api, operator, tenant_name)
        assert api.post("/v1/apps", json={"name": "slow"}, headers=auth).status_code == 201
        marker = f"slow-step-started # {RUN_ID}"
        slow = tar_gz(source(f"crash-{RUN_ID}", extra_steps=f"RUN echo {marker} && sleep 3\n"))
        dep = api.post("/v1/apps/slow/deployments", content=slow, headers={**auth, "Content-Type": "application/gzip"}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120
        while "slow-step-started" not in api.get(f"/v1/apps/slow/deployments/{dep}/logs", headers=auth).text:
            assert time.monotonic() < deadline, "the slow build step never started"
            time.sleep(0.2)
        assert api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()["status"] == "building"
        job_id, old_owner = _lease_of(server, dep)
        server.kill()  # mid-build: no chance to clean up or record anything

        server.start()
        restarted_at = time.monotonic()
        body: dict = {}
        while time.monotonic() - restarted_at < 150:
            body = api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()
            if body["status"] in TERMINAL:
                break
            time.sleep(0.5)
        settled_s = time.monotonic() - restarted_at
        print(
            f"\nafter restart: {body['status']} in {settled_s:.1f}s (job lease {JOB_LEASE_S}s); transitions "
            f"{[(t['status'], t.get('reason')) for t in body['transitions']]}"
        )
        assert body["status"] in {"running", "failed"}, body
        if body["status"] == "failed":
            assert body["reason"]
        else:
            assert settled_s < LIVE_AFTER_RESTART_S, f"live {settled_s:.1f}s after the restart: the lease was waited out"
            assert [t["status"] for t in body["transitions"]].count("building") == 2  # retried after the crash
            r = httpx.get(server.env["MOORAGE_TRAEFIK_URL"] + "/", headers={"Host": f"slow.{tenant_name}.apps.test"})
            assert r.status_code == 200 and f"crash-{RUN_ID}" in r.text
        _late_writer_is_fenced(server, job_id, old_owner, dep, body["status"])
        time.sleep(3)  # a reconcile period: orphans, if any, would be gone by now
        client = docker.from_env()
        containers = client.containers.list(all=True, filters={"label": f"moorage.tenant={tenant_name}"})
        expected = 1 if body["status"] == "running" else 0
        assert len(containers) == expected, [(c.name, c.status) for c in containers]
        assert all(c.status == "running" for c in containers)
        steps = [c.short_id for c in client.containers.list(all=True) if marker in " ".join(c.attrs["Config"].get("Cmd") or [])]
        assert steps == [], f"build step containers left behind: {steps}"
    finally:
        server.kill()
        cleanup_tenant(tenant_name)


def _lease_of(server: ServeProcess, deployment_id: str) -> tuple[str, str]:
    """The running job of the deployment and the worker that holds its lease, read from the
    server's SQLite file."""
    database = sqlite3.connect(f"file:{server.env['MOORAGE_DATA_DIR']}/moorage.db?mode=ro", uri=True)
    try:
        row = database.execute(
            "SELECT id, lease_owner FROM jobs WHERE subject_id = ? AND state = 'running'", (deployment_id,)
        ).fetchone()
    finally:
        database.close()
    assert row is not None and row[1], "the build's job holds no lease"
    return row[0], row[1]


def _late_writer_is_fenced(server: ServeProcess, job_id: str, old_owner: str, deployment_id: str, status: str) -> None:
    """A writer still holding the dead process's lease (a worker thread that was frozen, say)
    tries what that worker would have done next: fail the deployment. The fence refuses it,
    and the deployment is as the restarted server left it."""
    from sqlalchemy import text

    from control.domain.errors import LeaseLost
    from control.jobs.queue import JobQueue
    from control.store.database import Store

    store = Store(f"sqlite:///{server.env['MOORAGE_DATA_DIR']}/moorage.db")
    try:
        queue = JobQueue(store)
        job = queue.get(job_id)
        assert job is not None and job.lease_owner != old_owner
        with store.fenced(queue.fence(job, old_owner)), pytest.raises(LeaseLost), store.write() as session:
            session.execute(
                text("UPDATE deployments SET status = 'failed', reason = 'late writer' WHERE id = :id"), {"id": deployment_id}
            )
        with store.read() as session:
            after = session.execute(text("SELECT status FROM deployments WHERE id = :id"), {"id": deployment_id}).scalar()
        assert after == status
    finally:
        store.dispose()


SPREAD_KILLS = 5  # at moments spread from the request's start to just past its usual answer
COMMIT_KILLS = 2  # the moment its writes and answer are committed, before the client reads it
COMMIT_TRIES = 10


def test_sigkill_mid_idempotent_post_never_loses_or_duplicates(api_server: ServeProcess) -> None:
    """Deployment uploads, each with its own Idempotency-Key; the server is SIGKILLed during
    each, then started again, and the client retries with the same key and bytes."""
    server = api_server
    tenant_name = f"kill-post-{RUN_ID}"
    operator = server.bootstrap()
    server.start()
    archive = tar_gz(source(f"kill-{RUN_ID}") | {f"pad/{n}.txt": f"{n}\n" * 2000 for n in range(40)})  # some work per POST
    api = httpx.Client(base_url=server.url, timeout=30)
    try:
        auth = _tenant(api, operator, tenant_name)
        assert api.post("/v1/apps", json={"name": "web"}, headers=auth).status_code == 201
        headers = {**auth, "Content-Type": "application/gzip"}
        started = time.perf_counter()
        calibration = api.post(
            "/v1/apps/web/deployments", content=archive, headers={**headers, "Idempotency-Key": f"cal-{RUN_ID}"}
        )
        usual_s = time.perf_counter() - started
        assert calibration.status_code == 202
        created = [calibration.json()["id"]]
        outcomes: Counter[str] = Counter()
        in_flight_409s = 0

        slowest_answer_s = 0.0

        def retry(key: str, first: httpx.Response | str) -> None:
            nonlocal in_flight_409s, slowest_answer_s
            server.start()
            answering = time.monotonic()
            while True:  # the agent's retry loop: same key, same bytes
                r = api.post("/v1/apps/web/deployments", content=archive, headers={**headers, "Idempotency-Key": key})
                if r.status_code != 409 or r.json().get("code") != "idempotency-key-in-flight":
                    break
                in_flight_409s += 1
                time.sleep(float(r.headers.get("retry-after", "1")))
            assert r.status_code == 202, r.text
            slowest_answer_s = max(slowest_answer_s, time.monotonic() - answering)
            created.append(r.json()["id"])
            if isinstance(first, httpx.Response):
                assert first.status_code == 202 and first.json()["id"] == r.json()["id"]  # the same answer again
                outcomes["answered before the kill: replayed"] += 1
            elif r.headers.get("idempotent-replayed") == "true":
                outcomes["committed, answer cut off: replayed"] += 1
            else:
                outcomes["cut off before its commit: run by the retry"] += 1

        for n in range(SPREAD_KILLS):
            key = f"spread-{RUN_ID}-{n}"
            delay = usual_s * 1.2 * n / (SPREAD_KILLS - 1)
            retry(key, _post_then_kill(server, api, headers, archive, key, lambda d=delay: time.sleep(d)))
        at_commit, split = 0, 0
        for n in range(COMMIT_TRIES):
            key = f"commit-{RUN_ID}-{n}"
            seen: list[str] = []
            first = _post_then_kill(
                server, api, headers, archive, key, lambda k=key, out=seen: out.append(_freeze_at_commit(server, k))
            )
            at_commit += seen[0] == "committed"
            split += seen[0] == "writes without answer"
            retry(key, first)
            if at_commit == COMMIT_KILLS:
                break

        listed = [d["id"] for d in api.get("/v1/apps/web/deployments?limit=100", headers=auth).json()["items"]]
        print(
            f"\nPOST usually {usual_s * 1000:.0f} ms; {SPREAD_KILLS + n + 1} kills: {dict(outcomes)}; "
            f"in-flight 409s meanwhile: {in_flight_409s}; slowest retry answered {slowest_answer_s:.2f}s after the "
            f"restart (key lease {IDEMPOTENCY_LEASE_S}s); kills at the commit {at_commit} of {n + 1} tries"
        )
        assert slowest_answer_s < RETRY_ANSWERED_S, "a retry waited for the dead process's Idempotency-Key lease"
        assert sorted(listed) == sorted(created), "a deployment was lost or duplicated"
        assert len(set(created)) == len(created) == SPREAD_KILLS + n + 2
        assert split == 0, "a deployment row was visible before its answer was stored"
        assert at_commit == COMMIT_KILLS, "never caught the server at the moment of its commit"
    finally:
        server.kill()
        cleanup_tenant(tenant_name)


def _post_then_kill(
    server: ServeProcess, api: httpx.Client, headers: dict[str, str], archive: bytes, key: str, wait: Callable[[], object]
) -> httpx.Response | str:
    """POST on a warm connection from a thread; SIGKILL the server once ``wait()`` returns."""
    api.get("/healthz")  # the connection is open before the clock starts
    answer: list[httpx.Response | str] = []
    sending = threading.Event()

    def send() -> None:
        sending.set()
        try:
            answer.append(api.post("/v1/apps/web/deployments", content=archive, headers={**headers, "Idempotency-Key": key}))
        except httpx.HTTPError as exc:
            answer.append(type(exc).__name__)

    sender = threading.Thread(target=send)
    sender.start()
    sending.wait(5)
    wait()
    server.kill()
    sender.join(30)
    return answer[0]


def _freeze_at_commit(server: ServeProcess, key: str, timeout: float = 5.0) -> str:
    """Watch the server's SQLite file; the moment the request's deployment row (or its stored
    answer) shows, SIGSTOP the server (the caller then SIGKILLs it). Says what it saw: both at
    once ("committed"), one without the other ("writes without answer", which the unit of
    work rules out), or nothing in time ("timeout")."""
    database = sqlite3.connect(f"file:{server.env['MOORAGE_DATA_DIR']}/moorage.db?mode=ro", uri=True, isolation_level=None)
    deployments = "SELECT count(*) FROM deployments"
    answer = "SELECT state FROM idempotency_records WHERE idempotency_key = ?"
    try:
        before = database.execute(deployments).fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            database.execute("BEGIN")  # one snapshot for both reads
            state = database.execute(answer, (key,)).fetchone()
            wrote = database.execute(deployments).fetchone()[0] > before
            database.execute("COMMIT")
            answered = bool(state and state[0] == "completed")
            if wrote or answered:
                assert server.proc is not None
                os.kill(server.proc.pid, signal.SIGSTOP)
                return "committed" if wrote and answered else "writes without answer"
        return "timeout"
    finally:
        database.close()
