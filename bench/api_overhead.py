"""API overhead: what moorage's HTTP layer (authentication, rate limiting, idempotency,
audit, request context, metrics, problem handling) costs over bare Litestar routes doing
the same SQLite work, measured in one run, served the same way.

    .venv/bin/python bench/api_overhead.py [--get 1500] [--post 400] [--workers 8]
                                           [--rounds 3] [--wrk-seconds 3] [--no-wrk]

Three uvicorn servers on loopback, each in its own process with one worker, started with
the options ``moorage serve`` uses (control/cli/server.py), on copies of one database:

  moorage   ``moorage serve`` itself (bench/_serve.py; settings from MOORAGE_* variables: job workers
            and the reconciler off, rate limits raised so the bench is not throttled,
            everything else as in production, info-level JSON logs included);
  bare      a bare Litestar app whose sync handlers run the same repository calls
            (``AppRepository.list/get/add``, one unit of work per request, in a worker
            thread like moorage's) with nothing around them;
  sqlite3   a bare Litestar route reading the same app row with the stdlib ``sqlite3``
            module on the event loop: about the most a Python server here can do.

Cases, each driven by the Python client (httpx, ``--workers`` concurrent requests) and by
``wrk`` (``-c --workers``, bench/wrk_api.lua sets the headers and a fresh Idempotency-Key
per POST) when it is installed:

  list  ``GET /v1/apps`` authenticated (moorage) vs the same query (bare);
  post  ``POST /v1/apps`` authenticated, rate-limited, idempotent create with a fresh key
        and name each time (moorage) vs the same insert (bare).  Target: p50 <= 1.5x;
  get   ``GET /v1/apps/{id}`` authenticated (moorage) vs the same row (bare, sqlite3).
        Target: throughput >= 0.5x sqlite3's.

Each case runs ``--rounds`` times, moorage and its baselines back to back (the order
alternating), so machine load drifts hit all of them; ratios are taken within a round
and the median ratio is reported. The targets are judged on wrk's figures (the lighter
client) when wrk ran, else on the Python client's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _serve import (  # bench/ is on sys.path when a bench runs as a script
    cpu_seconds,
    free_port,
    moorage_env,
    spawn,
    start_moorage,
    stop,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDED_APPS = 20
WRK_SCRIPT = Path(__file__).with_name("wrk_api.lua")
POST_P50_TARGET = 1.5  # moorage / bare, at most
GET_RPS_TARGET = 0.5  # moorage / sqlite3, at least


def serve_like_moorage(app: Any, port: int) -> None:
    """A baseline under the same server, with the options `moorage serve` passes."""
    import uvicorn

    from control.cli.server import proxy_options
    from control.settings import Settings

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=10,
                **proxy_options(Settings()))  # fmt: skip


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

    @get("/v1/apps/{app:str}", sync_to_thread=True)
    def get_app(app: str) -> dict[str, Any]:
        with db.read() as session:
            found = AppRepository(session, tenant_id).get(app)
        assert found is not None
        return dataclasses.asdict(found)

    @post("/v1/apps", sync_to_thread=True, status_code=201)
    def create_app(data: dict[str, Any]) -> dict[str, Any]:
        with db.write() as session:
            app = AppRepository(session, tenant_id).add(id=new_id("app"), name=str(data["name"]))
        return dataclasses.asdict(app)

    return Litestar([healthz, list_apps, get_app, create_app], debug=False)


APP_COLUMNS = ("id", "name", "description", "port", "health_check_path", "builder", "created_at", "updated_at")


def sqlite3_app(data_dir: Path, tenant_id: str) -> Any:
    """The physical limit: one row read with the stdlib driver, on the event loop, no ORM."""
    from litestar import Litestar, get

    connection = sqlite3.connect(data_dir / "moorage.db", check_same_thread=False)
    query = f"SELECT {', '.join(APP_COLUMNS)} FROM apps WHERE tenant_id = ? AND id = ?"

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/apps/{app:str}", sync_to_thread=False)
    def get_app(app: str) -> dict[str, Any]:
        row = connection.execute(query, (tenant_id, app)).fetchone()
        return dict(zip(APP_COLUMNS, row, strict=True))

    return Litestar([healthz, get_app], debug=False)


@dataclasses.dataclass(frozen=True)
class Prepared:
    dirs: dict[str, Path]  # server -> its copy of the database
    tenant_id: str
    token: str
    app_id: str  # the row every GET of one app reads


def prepare(root: Path) -> Prepared:
    """A migrated database with an operator, a tenant, its admin key and seeded apps; copies for the baselines."""
    from litestar.testing import TestClient

    from control.app import create_app
    from control.settings import Settings

    dirs = {name: root / name for name in ("moorage", "bare", "sqlite3")}
    for path in dirs.values():
        path.mkdir(mode=0o700)
    settings = Settings.from_env(moorage_env(dirs["moorage"], 0, log_level="warning"))
    app = create_app(settings)
    with TestClient(app) as client:
        operator = app.state.services.keys.bootstrap_operator("bench").token
        auth = {"Authorization": f"Bearer {operator}"}
        tenant = client.post("/v1/tenants", json={"name": "bench"}, headers=auth).json()
        key = client.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "bench"}, headers=auth).json()
        seeded = [
            client.post("/v1/apps", json={"name": f"seed-{i}"}, headers={"Authorization": f"Bearer {key['token']}"}).json()
            for i in range(SEEDED_APPS)
        ]
    with app.state.services.db.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    app.state.services.db.dispose()
    for name in ("bare", "sqlite3"):  # same rows, same schema
        shutil.copyfile(dirs["moorage"] / "moorage.db", dirs[name] / "moorage.db")
    return Prepared(dirs, tenant["id"], key["token"], seeded[0]["id"])


@dataclasses.dataclass
class Server:
    name: str
    url: str
    token: str | None  # what its routes need in Authorization
    proc: subprocess.Popen[bytes]


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    label: str
    method: str
    path: str
    baselines: tuple[str, ...]
    requests: int  # per Python-client measurement


def post_body(unique: str) -> tuple[dict[str, Any], dict[str, str]]:
    return {"name": f"p{unique}"}, {"Idempotency-Key": f"bench-{unique}"}


async def drive(server: Server, case: Case, total: int, workers: int) -> dict[str, float]:
    latencies: list[float] = []
    issued = 0
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            extra: dict[str, Any] = {"headers": headers}
            if case.method == "POST":
                body, key = post_body(uuid.uuid4().hex[:12])
                extra = {"json": body, "headers": {**headers, **key}}
            started = time.perf_counter()
            response = await client.request(case.method, case.path, **extra)
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 300:
                failures.append(f"{response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(workers)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests to {server.name} {case.method} {case.path}, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "rps": len(ordered) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def drive_wrk(server: Server, case: Case, seconds: int, workers: int, prefix: str) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{workers}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
               server.url + case.path, "--", case.method, server.token or "", prefix]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("wrk-json ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr[-500:] or run.stdout[-500:]}")
    r = json.loads(lines[-1].removeprefix("wrk-json "))
    if r["status_errors"] or r["socket_errors"] or not r["requests"]:
        raise RuntimeError(f"wrk against {server.name} {case.method} {case.path}: {r}")
    return {"n": r["requests"], "rps": r["requests"] / r["seconds"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000}


Measure = Callable[[Server, Case, int], dict[str, float]]


def measured(measure: Measure, server: Server, case: Case, round_no: int) -> dict[str, float]:
    """``measure`` plus the server's CPU time per request: less sensitive than throughput to
    what else runs on the machine."""
    before = cpu_seconds(server.proc.pid)
    result = measure(server, case, round_no)
    return result | {"cpu_ms": (cpu_seconds(server.proc.pid) - before) * 1000 / result["n"]}


def run_case(case: Case, servers: dict[str, Server], rounds: int, measure: Measure) -> list[dict[str, dict[str, float]]]:
    """``rounds`` measurements of moorage and the case's baselines, back to back, the order
    alternating round by round."""
    names = ["moorage", *case.baselines]
    for name in names:  # warm-up: connections, caches, the first requests of each route
        measure(servers[name], case, -1)
    results = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        results.append({name: measured(measure, servers[name], case, r) for name in order})
    return results


def median_of(results: list[dict[str, dict[str, float]]], name: str, field: str) -> float:
    return statistics.median(r[name][field] for r in results)


def median_ratio(results: list[dict[str, dict[str, float]]], top: str, bottom: str, field: str) -> float:
    return statistics.median(r[top][field] / r[bottom][field] for r in results)


def report(driver: str, cases: list[Case], found: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, float]:
    """Print one table per driver; the ratios the targets are judged on."""
    print(f"\n-- {driver}: median of rounds; ratios are medians of per-round ratios")
    print(f"{'case':<44}{'n':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}")
    for case in cases:
        results = found[case.key]
        for name in ("moorage", *case.baselines):
            row = [median_of(results, name, f) for f in ("n", "rps", "p50_ms", "p99_ms", "cpu_ms")]
            print(f"{case.label + ' ' + name:<44}{row[0]:>7.0f}{row[1]:>9.0f}{row[2]:>9.2f}{row[3]:>9.2f}{row[4]:>12.3f}")
        for base in case.baselines:
            print(f"  {case.key}: moorage/{base} p50 x{median_ratio(results, 'moorage', base, 'p50_ms'):.2f}, "
                  f"p99 x{median_ratio(results, 'moorage', base, 'p99_ms'):.2f}, "
                  f"throughput x{median_ratio(results, 'moorage', base, 'rps'):.2f}, "
                  f"server CPU per request x{median_ratio(results, 'moorage', base, 'cpu_ms'):.2f}")  # fmt: skip
    nan = float("nan")
    post, get, listed = found.get("post"), found.get("get"), found.get("list")
    return {
        "post_p50": median_ratio(post, "moorage", "bare", "p50_ms") if post else nan,
        "post_p50_moorage": median_of(post, "moorage", "p50_ms") if post else nan,
        "post_p50_bare": median_of(post, "bare", "p50_ms") if post else nan,
        "get_rps": median_ratio(get, "moorage", "sqlite3", "rps") if get else nan,
        "get_rps_moorage": median_of(get, "moorage", "rps") if get else nan,
        "get_rps_sqlite3": median_of(get, "sqlite3", "rps") if get else nan,
        "list_p50": median_ratio(listed, "moorage", "bare", "p50_ms") if listed else nan,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--get", type=int, default=1500, help="GET requests per Python-client measurement")
    parser.add_argument("--post", type=int, default=400, help="POST requests per Python-client measurement")
    parser.add_argument("--workers", type=int, default=8, help="concurrent requests (client workers, wrk connections)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each case per server and driver")
    parser.add_argument("--wrk-seconds", type=int, default=3, help="length of one wrk measurement")
    parser.add_argument("--no-wrk", action="store_true", help="only the Python client")
    parser.add_argument("--no-python", action="store_true", help="only wrk (when installed)")
    parser.add_argument("--cases", default="list,post,get", help="comma-separated subset of list,post,get")
    parser.add_argument("--serve", choices=["bare", "sqlite3"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        make = bare_app if args.serve == "bare" else sqlite3_app
        serve_like_moorage(make(args.data_dir, args.tenant), args.port)
        return 0

    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-api-"))
    servers: dict[str, Server] = {}
    found: dict[str, dict[str, list[dict[str, dict[str, float]]]]] = {}
    try:
        prepared = prepare(root)
        for name, path in prepared.dirs.items():
            port = free_port()
            url, log_path = f"http://127.0.0.1:{port}", root / f"{name}.log"
            if name == "moorage":
                servers[name] = Server(name, url, prepared.token, start_moorage(path, port, log_path))
            else:
                serve = ["--serve", name, "--data-dir", str(path), "--port", str(port), "--tenant", prepared.tenant_id]
                servers[name] = Server(name, url, None, spawn([sys.executable, __file__, *serve], url, log_path))
        cases = [
            Case("list", "GET /v1/apps (list)", "GET", "/v1/apps", ("bare",), args.get),
            Case("post", "POST /v1/apps (idempotent)", "POST", "/v1/apps", ("bare",), args.post),
            Case("get", "GET /v1/apps/{id} (one app)", "GET", f"/v1/apps/{prepared.app_id}", ("bare", "sqlite3"), args.get),
        ]

        def python_client(server: Server, case: Case, round_no: int) -> dict[str, float]:
            total = min(50, case.requests) if round_no < 0 else case.requests
            return asyncio.run(drive(server, case, total, args.workers))

        def wrk(server: Server, case: Case, round_no: int) -> dict[str, float]:
            seconds = 1 if round_no < 0 else args.wrk_seconds
            prefix = f"w{uuid.uuid4().hex[:6]}r"  # names unique across measurements on one database
            return drive_wrk(server, case, seconds, args.workers, prefix)

        cases = [case for case in cases if case.key in args.cases.split(",")]
        drivers: dict[str, Measure] = {} if args.no_python and use_wrk else {"python": python_client}
        if use_wrk:
            drivers["wrk"] = wrk
        for driver, measure in drivers.items():
            found[driver] = {case.key: run_case(case, servers, args.rounds, measure) for case in cases}
    finally:
        for server in servers.values():
            stop(server.proc)
        shutil.rmtree(root, ignore_errors=True)

    print(f"uvicorn on loopback as `moorage serve` runs it (one process, one worker per server), "
          f"{args.workers} concurrent requests, {args.rounds} rounds, {os.cpu_count()} CPUs")  # fmt: skip
    figures = {driver: report(driver, cases, per_case) for driver, per_case in found.items()}
    judged = "wrk" if "wrk" in figures else "python"
    fig = figures[judged]
    post_ok, get_ok = fig["post_p50"] <= POST_P50_TARGET, fig["get_rps"] >= GET_RPS_TARGET
    others = [f"{d}: POST x{f['post_p50']:.2f}, GET x{f['get_rps']:.2f}" for d, f in figures.items() if d != judged]
    print(
        f"summary: api overhead ({judged}): idempotent POST /v1/apps p50 {fig['post_p50_moorage']:.1f} vs "
        f"{fig['post_p50_bare']:.1f} ms bare x{fig['post_p50']:.2f} (target <= {POST_P50_TARGET}x: "
        f"{'met' if post_ok else 'NOT met'}); GET /v1/apps/{{id}} {fig['get_rps_moorage']:.0f} vs "
        f"{fig['get_rps_sqlite3']:.0f} req/s sqlite3 x{fig['get_rps']:.2f} (target >= {GET_RPS_TARGET}x: "
        f"{'met' if get_ok else 'NOT met'}); list p50 x{fig['list_p50']:.2f}"
        + (f" [{'; '.join(others)}]" if others else "")
        + ("" if use_wrk else " [wrk not installed: Python client only]")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
