"""Twenty clients race one Idempotency-Key against a real uvicorn server (real threads,
real sockets, one SQLite file); then the server restarts and the answer is still there."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from litestar.testing import TestClient
from sqlalchemy import func, select

from control.app import create_app
from control.settings import Settings
from control.store.models import AppRow, IdempotencyRecordRow
from tests.live_server import free_port, serving

PARALLEL = 20


def test_parallel_duplicates_create_exactly_one_app_and_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), base_domain="apps.test")
    body = {"name": "racer", "port": 9000}
    with serving(settings) as (base, app):
        operator_token = app.state.services.keys.bootstrap_operator("race-op").token  # type: ignore[attr-defined]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {operator_token}"}) as op:
            tenant_id = op.post("/v1/tenants", json={"name": "race"}).json()["id"]
            token = op.post(f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["deploy"]}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "race-1"}
        barrier = threading.Barrier(PARALLEL)

        def attempt(_: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=30) as client:
                barrier.wait()  # all twenty leave the gate together
                return client.post("/v1/apps", json=body, headers=headers)

        with ThreadPoolExecutor(PARALLEL) as pool:
            responses = list(pool.map(attempt, range(PARALLEL)))

        fresh = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
        replays = [r for r in responses if r.status_code == 201 and r.headers.get("idempotent-replayed") == "true"]
        in_flight = [r for r in responses if r.status_code == 409]
        outcome = Counter("created" if r in fresh else "replayed" if r in replays else r.status_code for r in responses)
        print(f"\n{PARALLEL} parallel POSTs, one Idempotency-Key: {dict(outcome)}")
        assert len(fresh) == 1, outcome
        assert len(fresh) + len(replays) + len(in_flight) == PARALLEL, outcome
        for replay in replays:
            assert replay.content == fresh[0].content
        for conflict in in_flight:
            assert conflict.json()["code"] == "idempotency-key-in-flight"
            assert int(conflict.headers["retry-after"]) >= 1
        with app.state.services.db.read() as session:  # type: ignore[attr-defined]
            assert session.scalar(select(func.count()).select_from(AppRow)) == 1
            assert session.scalar(select(func.count()).select_from(IdempotencyRecordRow)) == 1

        with httpx.Client(base_url=base) as client:
            reused = client.post("/v1/apps", json={**body, "port": 9001}, headers=headers)
        assert reused.status_code == 422 and reused.json()["code"] == "idempotency-key-reused"
        created = fresh[0].content

    # A new process on the same database file: the key still answers with the same bytes.
    with TestClient(create_app(settings)) as client:
        replay = client.post("/v1/apps", json=body, headers=headers)
        assert replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == created
        reused = client.post("/v1/apps", json={**body, "port": 9001}, headers=headers)
        assert reused.status_code == 422
