"""Helpers for runtime tests: unique names per run, tiny HTTP servers, polling through Traefik."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from runtime.containers import ContainerInfo, Containers
from runtime.sandbox import ContainerSpec, SandboxPolicy
from runtime.traefik import DEFAULT_THROTTLE

BUSYBOX = "moorage/busybox:latest"
PYTHON = "moorage/python:3-bookworm"
RUN_ID = uuid.uuid4().hex[:8]
RUN_LABEL = "test.moorage/run"
SETUP_HINT = "run `sudo bash deploy/host-setup.sh` to install and start dockerd, runsc and Traefik"
# The test Traefiks reload as the host's does (runtime.traefik.DEFAULT_THROTTLE). Route files
# are staged outside the watched directory, so a write is one event, applied at once; a
# shorter throttle only means more reloads, and at 100ms requests in flight during rapid
# rewrites got 502s (test_route_atomicity).
TRAEFIK_THROTTLE = DEFAULT_THROTTLE
# Long enough that a route change Traefik has seen is applied: several throttle periods.
PAST_TRAEFIK_THROTTLE_S = 1.5


def tenant_name(label: str) -> str:
    return f"{label}-{RUN_ID}"


def spec(
    tenant: str, app: str, network: str, image: str = BUSYBOX, command: list[str] | None = None, **kw: object
) -> ContainerSpec:
    return ContainerSpec(
        tenant=tenant,
        app=app,
        image=image,
        network=network,
        name=f"moorage-test-{RUN_ID}-{tenant}-{app}"[:120],
        command=command,
        labels={RUN_LABEL: RUN_ID},
        **kw,
    )  # type: ignore[arg-type]


def httpd(tenant: str, app: str, network: str, body: str, port: int = 8080) -> ContainerSpec:
    """busybox httpd serving `body` at / on `port` (tiny, starts in well under a second)."""
    script = f"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"
    return spec(tenant, app, network, command=["sh", "-c", script])


def sleeper(tenant: str, app: str, network: str, image: str = PYTHON) -> ContainerSpec:
    return spec(tenant, app, network, image=image, command=["sleep", "600"])


def run(containers: Containers, s: ContainerSpec, policy: SandboxPolicy = SandboxPolicy()) -> ContainerInfo:
    return containers.run(s, policy)


def run_all(containers: Containers, *items: ContainerSpec | tuple[ContainerSpec, SandboxPolicy]) -> list[ContainerInfo]:
    """Start several containers at once, in the order given: each start mostly waits for its
    own gVisor sandbox, so one after another only adds up the waits. A failed start is raised
    once all have finished; the others carry the run label, which the session's cleanup removes."""
    pairs = [item if isinstance(item, tuple) else (item, SandboxPolicy()) for item in items]
    with ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
        futures = [pool.submit(containers.run, s, policy) for s, policy in pairs]
    return [future.result() for future in futures]


def wait_http(url: str, host: str, expect: str | None = None, timeout: float = 15.0) -> httpx.Response:
    """Poll through Traefik until the route answers 200 (Traefik applies file changes async)."""
    deadline = time.monotonic() + timeout
    last: object = None
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                r = client.get(url, headers={"Host": host})
                if r.status_code == 200 and (expect is None or expect in r.text):
                    return r
                last = f"{r.status_code} {r.text[:100]!r}"
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
    raise AssertionError(f"{host} via {url} never answered 200{f' with {expect!r}' if expect else ''}: {last}")


def pyhttp(tenant: str, app: str, network: str, body: str, port: int = 8000) -> ContainerSpec:
    """python3 -m http.server (threaded, keep-alive safe) serving `body` at /. Preferred behind
    Traefik: busybox httpd drops some pooled proxy connections (sporadic 502s, seen here)."""
    script = f"mkdir -p /srv && echo {body} > /srv/index.html && exec python3 -m http.server -d /srv {port}"
    return spec(tenant, app, network, image=PYTHON, command=["sh", "-c", script])
