"""Environment ready-to-exec time, warm (from the pool) versus cold, through the API.

Two `moorage serve` processes, the same settings but one with a warm pool of one container
of the image (MOORAGE_ENVIRONMENT_POOL) and one without. A sample is the time from
`POST /v1/environments` until the first `POST .../exec ["true"]` answers exit code 0, the
environment then deleted. Samples alternate between the two servers; each warm sample first
waits until the pool has refilled, so every warm sample is served from the pool.

    .venv/bin/python bench/environment_pool.py [-n 8]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._serve import free_port, moorage_env, start_moorage, stop

IMAGE = "moorage/python:3-bookworm"
POOL_ROLE = "environment-pool"
INSTANCE_LABEL = "org.moorage.control-plane"
SIZE = {"MOORAGE_ENVIRONMENT_CPU_DEFAULT": "0.5", "MOORAGE_ENVIRONMENT_MEMORY_MB_DEFAULT": "256"}


@dataclass
class Server:
    name: str
    url: str
    token: str
    instance: str


def prepare(data_dir: Path, tenant: str) -> tuple[str, str]:
    """A migrated database with a tenant and its admin key; the key and the control plane's instance id."""
    from litestar.testing import TestClient

    from control.app import create_app
    from control.jobs.runtime_docker import instance_id
    from control.settings import Settings

    settings = Settings.from_env(moorage_env(data_dir, 0, log_level="warning"))
    app = create_app(settings)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {app.state.services.keys.bootstrap_operator('bench').token}"}
        made = client.post("/v1/tenants", json={"name": tenant}, headers=auth).json()
        key = client.post(f"/v1/tenants/{made['id']}/keys", json={"scopes": ["admin"]}, headers=auth).json()
    app.state.services.db.dispose()
    return key["token"], instance_id(data_dir)


def wait_pool_ready(engine: docker.DockerClient, instance: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = engine.containers.list(filters={"label": [f"moorage.role={POOL_ROLE}", f"{INSTANCE_LABEL}={instance}"]})
        if any(c.name.startswith("moorage-pool-") and c.status == "running" for c in found):
            time.sleep(0.3)  # the refill pass records it a moment after the engine shows it
            return
        time.sleep(0.05)
    raise TimeoutError("the pool did not refill")


def ready_to_exec(server: Server) -> float:
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:
        started = time.perf_counter()
        made = client.post("/v1/environments", json={"image": IMAGE})
        made.raise_for_status()
        env = made.json()["id"]
        while True:
            ran = client.post(f"/v1/environments/{env}/exec", json={"command": ["true"]})
            if ran.status_code == 200 and ran.json()["exit_code"] == 0:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        client.delete(f"/v1/environments/{env}")
    return elapsed


def cleanup(engine: docker.DockerClient, instances: list[str]) -> None:
    for instance in instances:
        for c in engine.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}):
            c.remove(force=True)
    for name in ("moorage-t-bench-pool", "moorage-environment-pool"):
        for n in engine.networks.list(names=[name]):
            with contextlib.suppress(docker.errors.APIError):  # still used by another control plane's pool
                n.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=8, help="samples per side")
    args = parser.parse_args()
    engine = docker.from_env()
    samples: dict[str, list[float]] = {"cold": [], "warm": []}
    procs, servers = [], {}
    with tempfile.TemporaryDirectory(prefix="moorage-bench-pool-") as root:
        try:
            for name, pool in (("cold", ""), ("warm", f"{IMAGE}=1")):
                data_dir = Path(root) / name
                data_dir.mkdir()
                token, instance = prepare(data_dir, "bench-pool")
                port = free_port()
                env = {"environment_pool": pool, "environment_pool_refill_s": "0.2", "log_level": "warning"}
                env |= {k.removeprefix("MOORAGE_").lower(): v for k, v in SIZE.items()}
                procs.append(start_moorage(data_dir, port, data_dir / "serve.log", **env))
                servers[name] = Server(name, f"http://127.0.0.1:{port}", token, instance)
            ready_to_exec(servers["cold"])  # warm-up: the image's layers in the page cache, the tenant network made
            wait_pool_ready(engine, servers["warm"].instance)
            ready_to_exec(servers["warm"])
            for i in range(args.n):
                samples["cold"].append(ready_to_exec(servers["cold"]))
                wait_pool_ready(engine, servers["warm"].instance)
                samples["warm"].append(ready_to_exec(servers["warm"]))
                print(f"sample {i + 1}: cold {samples['cold'][-1] * 1000:.0f} ms, warm {samples['warm'][-1] * 1000:.0f} ms")
        finally:
            for proc in procs:
                stop(proc)
            cleanup(engine, [s.instance for s in servers.values()])
    cold, warm = statistics.median(samples["cold"]), statistics.median(samples["warm"])
    print(f"\n{'':24}{'cold':>10}{'warm':>10}")
    print(f"{'ready-to-exec median':24}{cold * 1000:>8.0f}ms{warm * 1000:>8.0f}ms")
    print(f"{'ready-to-exec max':24}{max(samples['cold']) * 1000:>8.0f}ms{max(samples['warm']) * 1000:>8.0f}ms")
    print(f"environment_pool: warm/cold ready-to-exec = {warm / cold:.2f} (target < 0.5) over {args.n} samples each")
    return 0 if warm < 0.5 * cold else 1


if __name__ == "__main__":
    sys.exit(main())
