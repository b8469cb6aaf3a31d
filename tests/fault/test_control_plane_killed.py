"""SIGKILL of the control plane (a real ``moorage serve`` process), then a restart on the
same SQLite file:

- mid-build: the deployment ends ``running`` (or ``failed`` with a reason), never stuck,
  and exactly one app container and no build container remain;
- mid idempotent POST, many times at spread-out moments and at the moment its answer is
  committed: every retry with the same key ends in the first attempt's answer, or in a
  fresh run when the first left nothing; never a second deployment. The request's writes
  and its stored answer are one transaction, so no moment shows one without the other."""

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


@pytest.fixture
def server(tmp_path: Path, traefik: TraefikProcess) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path / "data", traefik)
    yield srv
    srv.kill()


@pytest.fixture
def api_server(tmp_path: Path, traefik: TraefikProcess) -> Iterator[ServeProcess]:
    """No job workers (deployments stay queued: only the API is under test); short key leases."""
    srv = ServeProcess(tmp_path / "data", traefik, idempotency_lease_s=2, job_workers=0)
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
        slow = tar_gz(source(f"crash-{RUN_ID}", extra_steps=f"RUN echo {marker} && sleep 12\n"))
        dep = api.post("/v1/apps/slow/deployments", content=slow, headers={**auth, "Content-Type": "application/gzip"}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120
        while "slow-step-started" not in api.get(f"/v1/apps/slow/deployments/{dep}/logs", headers=auth).text:
            assert time.monotonic() < deadline, "the slow build step never started"
            time.sleep(0.2)
        assert api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()["status"] == "building"
        server.kill()  # mid-build: no chance to clean up or record anything

        server.start()
        killed_at = time.monotonic()
        body: dict = {}
        while time.monotonic() - killed_at < 150:
            body = api.get(f"/v1/apps/slow/deployments/{dep}", headers=auth).json()
            if body["status"] in TERMINAL:
                break
            time.sleep(0.5)
        print(
            f"\nafter restart: {body['status']} in {time.monotonic() - killed_at:.1f}s; transitions "
            f"{[(t['status'], t.get('reason')) for t in body['transitions']]}"
        )
        assert body["status"] in {"running", "failed"}, body
        if body["status"] == "failed":
            assert body["reason"]
        else:
            assert [t["status"] for t in body["transitions"]].count("building") == 2  # retried after the crash
            r = httpx.get(server.env["MOORAGE_TRAEFIK_URL"] + "/", headers={"Host": f"slow.{tenant_name}.apps.test"})
            assert r.status_code == 200 and f"crash-{RUN_ID}" in r.text
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

        def retry(key: str, first: httpx.Response | str) -> None:
            nonlocal in_flight_409s
            server.start()
            while True:  # the agent's retry loop: same key, same bytes
                r = api.post("/v1/apps/web/deployments", content=archive, headers={**headers, "Idempotency-Key": key})
                if r.status_code != 409 or r.json().get("code") != "idempotency-key-in-flight":
                    break
                in_flight_409s += 1
                time.sleep(float(r.headers.get("retry-after", "1")))
            assert r.status_code == 202, r.text
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
            f"in-flight 409s meanwhile: {in_flight_409s}; kills at the commit {at_commit} of {n + 1} tries"
        )
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
