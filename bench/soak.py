"""Soak: does anything pile up? A real ``moorage serve`` process (job workers, reconciler and
retention sweep on, short intervals so several passes fit) against the real engine, runsc
and a Traefik of its own, driven for ``--minutes`` by a churn of tenants and apps:

- apps created, deployed, redeployed with new code (each a new image), deleted;
- now and then a whole tenant emptied and deleted, and a new one created;
- API chatter in between (lists, keyed env changes).

Then, after one reconcile pass and one retention pass, it counts what is left and prints:

  route files          = live apps (apps with a running release)
  app images           <= live apps x kept releases (and none of a deleted tenant)
  networks             = live tenants that ever deployed (none of a deleted tenant)
  jobs rows            <= the bound from settings (finished kept + at most one live per app)
  server RSS growth    < 5 MB over the last 10 minutes (the last half, for shorter runs)

    .venv/bin/python bench/soak.py [--minutes 20] [--tenants 3] [--apps 3]

``bench/run_all --quick`` runs it for 2 minutes. Exit status 1 when a bound is not met.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
from _serve import free_port, moorage_env, start_moorage, stop  # bench/ is on sys.path when a bench runs as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.traefik import TraefikProcess  # noqa: E402
from tests.e2e.apps import source, tar_gz  # noqa: E402
from tests.e2e.conftest import cleanup_tenant  # noqa: E402

KEPT_RELEASES = 2
JOBS_KEPT = 40
RSS_GROWTH_LIMIT_MB = 5.0
TERMINAL = {"running", "failed", "cancelled"}


@dataclass
class Tenant:
    id: str
    name: str
    auth: dict[str, str]
    apps: dict[str, int] = field(default_factory=dict)  # app name -> versions deployed


@dataclass
class Churn:
    api: httpx.Client
    operator: dict[str, str]
    run: str
    tenants: list[Tenant] = field(default_factory=list)
    every_tenant: list[Tenant] = field(default_factory=list)  # the deleted ones too, for the count and the clean-up
    counts: dict[str, int] = field(default_factory=dict)
    serial: int = 0

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def new_tenant(self) -> Tenant:
        self.serial += 1
        name = f"soak-{self.run}-{self.serial}"
        body = self._ok(self.api.post("/v1/tenants", json={"name": name}, headers=self.operator))
        key = self._ok(self.api.post(f"/v1/tenants/{body['id']}/keys", json={"scopes": ["admin"]}, headers=self.operator))
        tenant = Tenant(body["id"], name, {"Authorization": f"Bearer {key['token']}"})
        self.tenants.append(tenant)
        self.every_tenant.append(tenant)
        self.count("tenants created")
        return tenant

    def deploy(self, tenant: Tenant, app: str) -> None:
        version = tenant.apps.get(app, 0) + 1
        archive = tar_gz(source(f"{app}-v{version}-{uuid.uuid4().hex[:6]}"))  # new code: a new image
        headers = {**tenant.auth, "Content-Type": "application/gzip", "Idempotency-Key": uuid.uuid4().hex}
        dep = self._ok(self.api.post(f"/v1/apps/{app}/deployments", content=archive, headers=headers))["id"]
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            status = self._ok(self.api.get(f"/v1/apps/{app}/deployments/{dep}", headers=tenant.auth))["status"]
            if status in TERMINAL:
                break
            time.sleep(0.25)
        tenant.apps[app] = version
        self.count(f"deployments {status or 'unfinished'}")

    def step(self, rng: random.Random, apps_per_tenant: int) -> None:
        tenant = rng.choice(self.tenants)
        roll = rng.random()
        if roll < 0.05 and len(self.tenants) > 1:
            self.delete_tenant(tenant)
            tenant = self.new_tenant()
        elif len(tenant.apps) < apps_per_tenant and roll < 0.5:
            name = f"a{rng.randrange(10**6)}"
            self._ok(self.api.post("/v1/apps", json={"name": name, "port": 8080}, headers=tenant.auth))
            self.count("apps created")
            self.deploy(tenant, name)
        elif tenant.apps and roll < 0.7:
            name = rng.choice(sorted(tenant.apps))
            self._ok(self.api.delete(f"/v1/apps/{name}", headers=tenant.auth), empty=True)
            del tenant.apps[name]
            self.count("apps deleted")
        elif tenant.apps:
            self.deploy(tenant, rng.choice(sorted(tenant.apps)))
        for _ in range(5):  # chatter
            self._ok(self.api.get("/v1/apps", headers=tenant.auth))
        if tenant.apps:
            app = rng.choice(sorted(tenant.apps))
            put = self.api.put(
                f"/v1/apps/{app}/env/GREETING",
                json={"value": uuid.uuid4().hex},
                headers={**tenant.auth, "Idempotency-Key": uuid.uuid4().hex},
            )
            self._ok(put)

    def delete_tenant(self, tenant: Tenant) -> None:
        for app in list(tenant.apps):
            self._ok(self.api.delete(f"/v1/apps/{app}", headers=tenant.auth), empty=True)
            self.count("apps deleted")
        tenant.apps.clear()
        self._ok(self.api.delete(f"/v1/tenants/{tenant.id}", headers=self.operator), empty=True)
        self.tenants.remove(tenant)
        self.count("tenants deleted")

    def _ok(self, response: httpx.Response, empty: bool = False) -> dict:
        if response.status_code >= 300:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:300]}"
            )
        return {} if empty else response.json()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--apps", type=int, default=3, help="at most this many apps per tenant")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="moorage-soak-"))
    port = free_port()
    engine = docker.from_env()
    with TraefikProcess() as traefik:
        settings = dict(
            base_domain="apps.test", traefik_dynamic_dir=traefik.dynamic_dir, traefik_url=traefik.url,
            job_workers=2, reconcile_interval_s=3, retention_sweep_interval_s=5, jobs_kept=JOBS_KEPT,
            kept_releases=KEPT_RELEASES, health_timeout_s=60, swap_drain_ms=100, log_level="warning",
        )  # fmt: skip
        env = moorage_env(data_dir, port, **settings)
        key_file = data_dir / "operator.key"
        subprocess.run(
            [sys.executable, "-m", "control.cli.main", "admin", "bootstrap", "--output-file", str(key_file)],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        server = start_moorage(data_dir, port, data_dir / "server.log", **settings)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        churn = Churn(api, {"Authorization": f"Bearer {key_file.read_text().strip()}"}, run)
        samples: list[tuple[float, float]] = []
        try:
            for _ in range(args.tenants):
                churn.new_tenant()
            started = time.monotonic()
            deadline = started + args.minutes * 60
            next_sample = started
            while time.monotonic() < deadline:
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - started, rss_mb(server.pid)))
                    next_sample += 10
                churn.step(rng, args.apps)
            samples.append((time.monotonic() - started, rss_mb(server.pid)))
            time.sleep(10)  # a reconcile pass (3 s) and a retention pass (5 s) after the last change
            figures = measure(churn, traefik, engine, data_dir, samples, args.minutes)
        finally:
            api.close()
            stop(server)
            for tenant in churn.every_tenant:
                cleanup_tenant(tenant.name)
    print(json.dumps({"actions": churn.counts}))
    return report(figures)


def measure(
    churn: Churn,
    traefik: TraefikProcess,
    engine: docker.DockerClient,
    data_dir: Path,
    samples: list[tuple[float, float]],
    minutes: float,
) -> dict[str, float]:
    live_tenants = {t.id for t in churn.tenants}
    live_apps = sum(len(t.apps) for t in churn.tenants)
    routes = len(list(Path(traefik.dynamic_dir).glob("*.yml")))
    ours = {t.id: t for t in churn.every_tenant}
    images_live = images_dead = 0
    for image in engine.api.images():
        for tag in image.get("RepoTags") or []:
            parts = tag.split("/")
            if len(parts) >= 3 and parts[0] == "moorage-apps" and parts[1] in ours:
                if parts[1] in live_tenants:
                    images_live += 1
                else:
                    images_dead += 1
    live_names = {f"moorage-t-{t.name}" for t in churn.tenants}
    dead_names = {f"moorage-t-{t.name}" for t in churn.every_tenant} - live_names
    present = {n.name for n in engine.networks.list()}
    database = sqlite3.connect(f"file:{data_dir / 'moorage.db'}?mode=ro", uri=True)
    jobs, live_jobs = database.execute("SELECT count(*), sum(state IN ('queued', 'running')) FROM jobs").fetchone()
    audit = database.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    database.close()
    window = 600.0 if minutes >= 20 else minutes * 60 / 2
    end_t, end_rss = samples[-1]
    start_rss = next(rss for t, rss in samples if t >= end_t - window)
    return {
        "live_tenants": len(live_tenants),
        "live_apps": live_apps,
        "route_files": routes,
        "images_live": images_live,
        "images_of_deleted_tenants": images_dead,
        "networks": len(present & live_names),
        "networks_of_deleted_tenants": len(present & dead_names),
        "jobs": jobs,
        "jobs_live": live_jobs or 0,
        "audit_events": audit,
        "rss_start_mb": samples[0][1],
        "rss_window_start_mb": start_rss,
        "rss_end_mb": end_rss,
        "rss_window_s": window,
    }


def report(f: dict[str, float]) -> int:
    jobs_bound = JOBS_KEPT + f["live_apps"]
    checks = {
        f"route files {f['route_files']:.0f} = live apps {f['live_apps']:.0f}": f["route_files"] == f["live_apps"],
        f"app images {f['images_live']:.0f} <= {f['live_apps']:.0f} apps x {KEPT_RELEASES} kept, "
        f"{f['images_of_deleted_tenants']:.0f} of deleted tenants": f["images_live"] <= f["live_apps"] * KEPT_RELEASES
        and f["images_of_deleted_tenants"] == 0,
        # A tenant gets its network with its first container: one that never deployed has none.
        f"networks {f['networks']:.0f} <= live tenants {f['live_tenants']:.0f}, "
        f"{f['networks_of_deleted_tenants']:.0f} of deleted tenants": f["networks"] <= f["live_tenants"]
        and f["networks_of_deleted_tenants"] == 0,
        f"jobs rows {f['jobs']:.0f} <= {jobs_bound:.0f} (kept {JOBS_KEPT} + live apps)": f["jobs"] <= jobs_bound,
        f"RSS growth {f['rss_end_mb'] - f['rss_window_start_mb']:+.1f} MB over the last {f['rss_window_s'] / 60:.0f} min "
        f"(< {RSS_GROWTH_LIMIT_MB:.0f}; {f['rss_start_mb']:.0f} -> {f['rss_end_mb']:.0f} MB)": f["rss_end_mb"]
        - f["rss_window_start_mb"]
        < RSS_GROWTH_LIMIT_MB,
    }
    print(json.dumps(f))
    for line, ok in checks.items():
        print(f"  {'met' if ok else 'NOT met'}: {line}")
    print("summary: soak: " + "; ".join(f"{line} ({'met' if ok else 'NOT met'})" for line, ok in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
