"""Concurrent deployments: T tenants x A apps, one deployment each, all POSTed at once;
time until every one is running, and proof that none was lost or duplicated.

Runs the real control plane in-process (workers + reconciler, served by uvicorn on a
loopback port so the POSTs really are concurrent HTTP requests) with its own Traefik. Each
deployment carries its own Idempotency-Key; a few are sent a second time with the same key
in the same burst, to show a replay never makes a second deployment. Then it checks the API
(one deployment per app, all running), the jobs' overlap (never more at once than the
worker count, nor per tenant than the per-tenant limit), Docker (one container per app)
and Traefik (each app answers 200 with its own version). Exit status 1 on any discrepancy.
Settings are the platform defaults or MOORAGE_* from the environment (the database is always
the bench's own SQLite file).

    .venv/bin/python bench/concurrent_deploys.py [--tenants 5] [--per-tenant 4] [--workers N] [--tenant-jobs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control.logging import configure_logging
from control.settings import Settings
from runtime import labels as L
from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import cleanup_tenant
from tests.live_server import free_port, serving

STEPS = ("build_s", "start_s", "health_s", "route_s")
TERMINAL = {"running", "failed", "cancelled"}
PLATFORM = Settings.from_env()


@dataclass
class Target:
    tenant: str
    app: str
    version: str
    token: str
    key: str  # Idempotency-Key
    archive: bytes
    answers: list[tuple[str, bool]] = field(default_factory=list)  # (deployment id, replayed?) per 202
    rejected: list[str] = field(default_factory=list)  # anything else the POST got
    in_flight: int = 0  # 409s: the same key was still being processed

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def host(self) -> str:
        return f"{self.app}.{self.tenant}.apps.test"


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment id -> last GET
    all_running_s: float = float("nan")
    to_running: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0

    @property
    def statuses(self) -> Counter[str]:
        return Counter(b["status"] for b in self.bodies.values())


def create_targets(api: httpx.Client, operator_token: str, tenants: list[str], per_tenant: int) -> list[Target]:
    op = {"Authorization": f"Bearer {operator_token}"}
    targets = []
    for tenant in tenants:
        tid = api.post("/v1/tenants", json={"name": tenant}, headers=op).raise_for_status().json()["id"]
        token = api.post(f"/v1/tenants/{tid}/keys", json={"scopes": ["admin"]}, headers=op).raise_for_status().json()["token"]
        for a in range(per_tenant):
            name, version = f"app{a}", f"{tenant}-app{a}-{uuid.uuid4().hex[:8]}"  # distinct source: distinct build
            api.post("/v1/apps", json={"name": name}, headers={"Authorization": f"Bearer {token}"}).raise_for_status()
            targets.append(Target(tenant, name, version, token, str(uuid.uuid4()), tar_gz(source(version))))
    return targets


def post_deployment(base: str, t: Target, deadline: float) -> None:
    """POST until a 202 (a fresh one or a replay); a 409 means the same key is in flight."""
    headers = {**t.auth, "Content-Type": "application/gzip", "Idempotency-Key": t.key}
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            r = client.post(f"/v1/apps/{t.app}/deployments", content=t.archive, headers=headers)
            if r.status_code == 202:
                t.answers.append((r.json()["id"], r.headers.get("idempotent-replayed") == "true"))
                return
            if r.status_code != 409:
                t.rejected.append(f"{r.status_code} {r.text[:200]}")
                return
            t.in_flight += 1
            time.sleep(float(r.headers.get("retry-after", "1")))
    t.rejected.append("no 202 before the deadline")


def wait_terminal(api: httpx.Client, targets: list[Target], deadline: float, out: Outcome) -> None:
    pending = {(t.app, t.answers[0][0]): t for t in targets if t.answers}
    while pending and time.monotonic() < deadline:
        for (app, dep), t in list(pending.items()):
            out.bodies[dep] = body = api.get(f"/v1/apps/{app}/deployments/{dep}", headers=t.auth).raise_for_status().json()
            if body["status"] in TERMINAL:
                del pending[(app, dep)]
        time.sleep(0.5)
    if pending:
        out.problems.append(f"{len(pending)} deployments not finished before the deadline")


def at(value: str) -> float:
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # an end sorts before a start
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def pct(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f} s, max {max(values):.1f} s" if values else "n/a"


def report_timings(targets: list[Target], settings: Settings, started_wall: float, out: Outcome) -> None:
    """From the deployments' own transitions (server clock) and step timings."""
    queued: list[float] = []
    ends: list[float] = []
    steps: dict[str, list[float]] = {k: [] for k in STEPS}
    busy: dict[str, list[tuple[float, float]]] = {}
    retried = 0  # extra build attempts (a job requeued after a dependency outage)
    for t in targets:
        body = out.bodies.get(t.answers[0][0]) if t.answers else None
        if body is None or body["status"] != "running":
            continue
        marks = {e["status"]: at(e["at"]) for e in body["transitions"]}  # the last entry per status
        builds = [at(e["at"]) for e in body["transitions"] if e["status"] == "building"]
        retried += len(builds) - 1
        out.to_running.append(marks["running"] - at(body["created_at"]))
        queued.append(builds[0] - at(body["created_at"]))
        # The attempt that succeeded: an earlier, requeued one (Docker was down) left no end
        # mark, and gave its worker slot back while it waited.
        busy.setdefault(t.tenant, []).append((marks["building"], marks["running"]))
        ends.append(marks["running"])
        for k in STEPS:
            if k in body["timings"]:
                steps[k].append(body["timings"][k])
    if ends:
        out.all_running_s = max(ends) - started_wall
    print(f"first POST -> all running: {out.all_running_s:.1f} s")
    print(
        f"per deployment, accepted -> running: {pct(out.to_running)}; waiting for a worker: {pct(queued)}; "
        f"extra build attempts: {retried}"
    )
    print("step medians: " + "  ".join(f"{k}={statistics.median(v):.2f}" for k, v in steps.items() if v))
    overall = max_overlap([i for spans in busy.values() for i in spans])
    per_tenant = max((max_overlap(spans) for spans in busy.values()), default=0)
    print(
        f"most deployments building/releasing at once: {overall} (workers {settings.job_workers}); "
        f"in one tenant: {per_tenant} (limit {settings.deploys_per_tenant})"
    )
    if overall > settings.job_workers or per_tenant > settings.deploys_per_tenant:
        out.problems.append(f"concurrency over its limits: {overall} at once, {per_tenant} in one tenant")


def verify_api(api: httpx.Client, targets: list[Target], replayed: list[Target], out: Outcome) -> None:
    """Every accepted deployment is in its app's list, and it is the only one there."""
    per_app_listed: Counter[int] = Counter()  # deployments listed -> apps
    for t in targets:
        out.problems += [f"{t.tenant}/{t.app}: POST answered {why}" for why in t.rejected]
        ids = {dep for dep, _ in t.answers}
        fresh = sum(1 for _, replay in t.answers if not replay)
        if len(ids) > 1 or fresh > 1:
            out.duplicated += 1
            out.problems.append(f"{t.tenant}/{t.app}: one Idempotency-Key gave {sorted(ids)} ({fresh} fresh answers)")
        listed = api.get(f"/v1/apps/{t.app}/deployments", headers=t.auth).raise_for_status().json()["items"]
        per_app_listed[len(listed)] += 1
        if not ids & {d["id"] for d in listed}:
            out.lost += 1
            out.problems.append(f"{t.tenant}/{t.app}: the accepted deployment is not in the app's list")
        if len(listed) > 1:
            out.duplicated += len(listed) - 1
            out.problems.append(f"{t.tenant}/{t.app}: {len(listed)} deployments listed")
    replays_ok = sum(1 for t in replayed if len(t.answers) == 2 and len({d for d, _ in t.answers}) == 1)
    statuses = out.statuses
    out.problems += [f"failed {b['id']}: {b['reason']}" for b in out.bodies.values() if b["status"] == "failed"]
    if statuses["running"] != len(targets):
        out.problems.append(f"{statuses['running']} of {len(targets)} running")
    if replays_ok != len(replayed):
        out.problems.append(f"only {replays_ok} of {len(replayed)} replays answered with the original deployment")
    print(
        f"API: statuses {dict(statuses)}; apps by deployments listed: "
        + ", ".join(f"{n} apps with {k}" for k, n in sorted(per_app_listed.items()))
        + f"; replays answered with the original deployment: {replays_ok}/{len(replayed)} "
        f"({sum(t.in_flight for t in replayed)} x 409 while the first was in flight)"
    )


def verify_runtime(targets: list[Target], traefik_url: str, out: Outcome) -> None:
    """Docker: one container per app, running (stopped leftovers count too). Traefik: each
    app's host answers with that app's own version."""
    engine = docker.from_env()
    per_app: Counter[tuple[str, str]] = Counter()
    not_running = []
    for tenant in sorted({t.tenant for t in targets}):
        for c in engine.containers.list(all=True, filters={"label": f"{L.TENANT}={tenant}"}):
            per_app[(tenant, c.labels.get(L.APP, "?"))] += 1
            if c.status != "running":
                not_running.append(c.name)
    engine.close()
    wrong = {f"{t}/{a}": n for (t, a), n in per_app.items() if n != 1}
    wrong |= {f"{t.tenant}/{t.app}": 0 for t in targets if (t.tenant, t.app) not in per_app}
    print(
        f"docker: {sum(per_app.values())} moorage containers for {len(per_app)} apps; apps without exactly one: "
        f"{len(wrong)}; not running: {len(not_running)}"
    )
    if wrong or not_running:
        out.problems.append(f"containers per app: {wrong}; not running: {not_running}")
    served = 0
    with httpx.Client(timeout=5) as web:
        for t in targets:
            try:
                r = web.get(traefik_url + "/", headers={"Host": t.host})
            except httpx.HTTPError as exc:
                out.problems.append(f"{t.host}: {type(exc).__name__}: {exc}")
                continue
            if r.status_code == 200 and f"version={t.version} " in r.text:
                served += 1
            else:
                out.problems.append(f"{t.host} answered {r.status_code} {r.text[:80]!r}")
    print(f"traefik: {served}/{len(targets)} apps answer 200 with their own version")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--per-tenant", type=int, default=4, help="apps per tenant (one deployment each)")
    parser.add_argument("--workers", type=int, default=PLATFORM.job_workers, help="job worker threads (MOORAGE_JOB_WORKERS)")
    parser.add_argument(
        "--tenant-jobs",
        type=int,
        default=PLATFORM.deploys_per_tenant,
        help="jobs of one tenant running at once (MOORAGE_DEPLOYS_PER_TENANT)",
    )
    parser.add_argument("--replays", type=int, default=3, help="deployments re-sent with the same Idempotency-Key")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for all to finish")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    tenants = [f"cd{run}-t{i}" for i in range(args.tenants)]
    total = args.tenants * args.per_tenant
    out = Outcome()
    data_dir = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    with TraefikProcess() as traefik:
        # Platform defaults (or MOORAGE_* from the environment) except: API rate limits (120/min
        # per key) would only throttle this bench's own polling (they have their own tests and bench).
        settings = Settings.from_env().with_overrides(
            data_dir=data_dir,
            database_url="",
            port=free_port(),
            base_domain="apps.test",
            log_level="warning",
            traefik_dynamic_dir=traefik.dynamic_dir,
            traefik_url=traefik.url,
            job_workers=args.workers,
            deploys_per_tenant=args.tenant_jobs,
            rate_limit_key_quota=100_000,
            rate_limit_tenant_quota=100_000,
        )
        print(
            f"{total} deployments ({args.tenants} tenants x {args.per_tenant} apps): job_workers={settings.job_workers} "
            f"deploys_per_tenant={settings.deploys_per_tenant} (platform defaults {PLATFORM.job_workers} and "
            f"{PLATFORM.deploys_per_tenant}), health_timeout_s={settings.health_timeout_s}, "
            f"reconcile_interval_s={settings.reconcile_interval_s}",
            flush=True,
        )
        try:
            with serving(settings) as (base, app), httpx.Client(base_url=base, timeout=60) as api:
                configure_logging("warning", "json")
                targets = create_targets(api, app.state.services.keys.bootstrap_operator("bench").token, tenants, args.per_tenant)
                # The replays go out in the same burst as their originals, spread over the tenants.
                replayed = targets[:: max(1, len(targets) // max(1, args.replays))][: args.replays]
                sends = [*targets, *replayed]
                started_wall, started = time.time(), time.perf_counter()
                deadline = time.monotonic() + args.timeout
                with ThreadPoolExecutor(max_workers=len(sends)) as pool:
                    for done in [pool.submit(post_deployment, base, t, deadline) for t in sends]:
                        done.result()
                print(
                    f"POSTed {len(sends)} requests ({len(replayed)} replays) in {time.perf_counter() - started:.2f} s", flush=True
                )
                wait_terminal(api, targets, deadline, out)
                print(f"all terminal (seen by polling every 0.5 s) after {time.perf_counter() - started:.1f} s")
                report_timings(targets, settings, started_wall, out)
                verify_api(api, targets, replayed, out)
                verify_runtime(targets, traefik.url, out)
        finally:
            for tenant in tenants:
                cleanup_tenant(tenant)
            shutil.rmtree(data_dir, ignore_errors=True)
    for line in out.problems:
        print(f"PROBLEM: {line}")
    running = out.statuses["running"]
    state = "all running" if running == total else f"{running} of {total} running"
    print(
        f"summary: {total} deployments across {args.tenants} tenants {state} in {out.all_running_s:.1f} s "
        f"(accepted -> running {pct(out.to_running)}; {settings.job_workers} workers, {settings.deploys_per_tenant} per tenant), "
        f"lost {out.lost}, duplicated {out.duplicated}, failed {out.statuses['failed']}"
        + (f", {len(out.problems)} problem(s)" if out.problems else "")
    )
    return 1 if out.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
