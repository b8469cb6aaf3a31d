"""API overhead: what moorage's HTTP layer (authentication, rate limiting, idempotency,
audit, request context, metrics, problem handling) costs over a bare Litestar route doing
the same SQLite work, measured in one run, served the same way.

    .venv/bin/python bench/api_overhead.py [--get 1500] [--post 400] [--workers 8]

Two uvicorn servers on loopback, each in its own process, on copies of the same database:
moorage's app (``create_app``; job workers and the reconciler off, rate limits raised so the
bench is not throttled) and a bare Litestar app whose handlers run the same repository calls
(``AppRepository.list`` / ``AppRepository.add`` on the same ``apps`` table, one unit of work
per request, sync handlers in a worker thread like moorage's). One client (httpx, a bounded
number of concurrent workers) drives both:

  (a) ``GET /v1/apps``  authenticated list (moorage) vs the same query (bare);
  (b) ``POST /v1/apps`` authenticated, rate-limited, idempotent create (a fresh
      ``Idempotency-Key`` and a unique name each time) vs the same insert (bare).

Prints throughput and p50/p99 latency per case, the overhead ratios, and a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDED_APPS = 20


def _settings(data_dir: Path, port: int) -> Any:
    from control.settings import Settings

    return Settings(
        data_dir=data_dir, port=port, base_domain="apps.bench", job_workers=0, reconcile_interval_s=0,
        database_purge_interval_s=0, rate_limit_key_quota=10**9, rate_limit_tenant_quota=10**9,
        log_level="warning", traefik_dynamic_dir=data_dir / "traefik",
    )


def serve_moorage(data_dir: Path, port: int) -> None:
    import uvicorn

    from control.app import create_app

    uvicorn.run(create_app(_settings(data_dir, port)), host="127.0.0.1", port=port, log_config=None, access_log=False)


def bare_app(data_dir: Path, tenant_id: str) -> Any:
    """The same SQLite work with nothing around it: no auth, limits, idempotency or audit."""
    from litestar import Litestar, get, post

    from control.ids import new_id
    from control.store.database import Store
    from control.store.repositories.apps import AppRepository

    db = Store(f"sqlite:///{data_dir / 'moorage.db'}")

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/apps", sync_to_thread=True)
    def list_apps() -> dict[str, Any]:
        with db.read() as session:
            page = AppRepository(session, tenant_id).list(limit=50, cursor=None)
        return {"items": [dataclasses.asdict(a) for a in page.items], "next_cursor": page.next_cursor}

    @post("/v1/apps", sync_to_thread=True, status_code=201)
    def create_app(data: dict[str, Any]) -> dict[str, Any]:
        with db.write() as session:
            app = AppRepository(session, tenant_id).add(id=new_id("app"), name=str(data["name"]))
        return dataclasses.asdict(app)

    return Litestar([healthz, list_apps, create_app], debug=False)


def serve_bare(data_dir: Path, port: int, tenant_id: str) -> None:
    import uvicorn

    uvicorn.run(bare_app(data_dir, tenant_id), host="127.0.0.1", port=port, log_config=None, access_log=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(root: Path) -> tuple[Path, Path, str, str]:
    """A migrated database with an operator, a tenant, its admin key and seeded apps; and a copy for the bare app."""
    from litestar.testing import TestClient

    from control.app import create_app

    moorage_dir, bare_dir = root / "moorage", root / "bare"
    moorage_dir.mkdir(mode=0o700)
    bare_dir.mkdir(mode=0o700)
    app = create_app(_settings(moorage_dir, 0))
    with TestClient(app) as client:
        operator = app.state.services.keys.bootstrap_operator("bench").token
        auth = {"Authorization": f"Bearer {operator}"}
        tenant = client.post("/v1/tenants", json={"name": "bench"}, headers=auth).json()
        key = client.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "bench"}, headers=auth).json()
        for i in range(SEEDED_APPS):
            client.post("/v1/apps", json={"name": f"seed-{i}"}, headers={"Authorization": f"Bearer {key['token']}"})
    with app.state.services.db.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    app.state.services.db.dispose()
    shutil.copyfile(moorage_dir / "moorage.db", bare_dir / "moorage.db")  # same rows, same schema
    return moorage_dir, bare_dir, tenant["id"], key["token"]


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server {args} did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


async def drive(base_url: str, method: str, total: int, workers: int, token: str | None) -> dict[str, float]:
    latencies: list[float] = []
    issued = 0
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            extra: dict[str, Any] = {}
            if method == "POST":
                unique = uuid.uuid4().hex[:12]
                extra = {"json": {"name": f"b-{unique}"}, "headers": {**headers, "Idempotency-Key": f"bench-{unique}"}}
            started = time.perf_counter()
            response = await client.request(method, "/v1/apps", **({"headers": headers} | extra))
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 300:
                failures.append(f"{response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(workers)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests to {base_url} {method}, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {
        "n": len(ordered), "rps": len(ordered) / elapsed, "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--get", type=int, default=1500, help="GET requests per server")
    parser.add_argument("--post", type=int, default=400, help="POST requests per server")
    parser.add_argument("--workers", type=int, default=8, help="concurrent client workers")
    parser.add_argument("--serve", choices=["moorage", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "moorage":
        serve_moorage(args.data_dir, args.port)
        return 0
    if args.serve == "bare":
        serve_bare(args.data_dir, args.port, args.tenant)
        return 0

    root = Path(tempfile.mkdtemp(prefix="moorage-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        moorage_dir, bare_dir, tenant_id, token = prepare(root)
        mport, bport = free_port(), free_port()
        procs.append(start(["--serve", "moorage", "--data-dir", str(moorage_dir), "--port", str(mport)], mport))
        procs.append(start(["--serve", "bare", "--data-dir", str(bare_dir), "--port", str(bport), "--tenant", tenant_id], bport))
        servers = {"moorage": (f"http://127.0.0.1:{mport}", token), "bare": (f"http://127.0.0.1:{bport}", None)}
        results: dict[tuple[str, str], dict[str, float]] = {}
        for method, total in (("GET", args.get), ("POST", args.post)):
            for _name, (url, key) in servers.items():  # warm up, then measure; same client, same order
                asyncio.run(drive(url, method, min(50, total), args.workers, key))
            for name, (url, key) in servers.items():
                results[(method, name)] = asyncio.run(drive(url, method, total, args.workers, key))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

    print(f"uvicorn on loopback, one process per server, {args.workers} concurrent client workers, {os.cpu_count()} CPUs")
    print(f"{'case':<46}{'n':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {"GET": "GET /v1/apps (list)", "POST": "POST /v1/apps (create, idempotent)"}
    for (method, name), r in results.items():
        print(f"{labels[method] + ' ' + name:<46}{r['n']:>6}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    parts = []
    for method in ("GET", "POST"):
        m, b = results[(method, "moorage")], results[(method, "bare")]
        ratio_p50, ratio_rps = m["p50_ms"] / b["p50_ms"], b["rps"] / m["rps"]
        print(f"{method}: moorage/bare p50 x{ratio_p50:.2f}, p99 x{m['p99_ms'] / b['p99_ms']:.2f}, throughput bare/moorage x{ratio_rps:.2f}")
        parts.append(f"{method} {m['rps']:.0f} vs {b['rps']:.0f} req/s (x{ratio_rps:.2f}), p50 {m['p50_ms']:.1f} vs {b['p50_ms']:.1f} ms "
                     f"(x{ratio_p50:.2f}), p99 {m['p99_ms']:.0f} vs {b['p99_ms']:.0f} ms")
    print("summary: api overhead moorage vs bare Litestar, same SQLite work: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
