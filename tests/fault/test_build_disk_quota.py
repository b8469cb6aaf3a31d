"""A deployment whose build fills the disk, through the real API.

Expected: the build is stopped at MOORAGE_BUILD_DISK_BYTES; the deployment ends ``failed``
with the quota in its ``reason`` and build log; the previous release keeps serving 200 with
its version the whole time, as the app's only container; no build container, tag or refused
layer is left; the next normal deployment reaches ``running``."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import docker
import httpx
import pytest

from runtime.traefik import TraefikProcess
from tests.e2e.apps import source, tar_gz
from tests.e2e.conftest import Platform
from tests.fault.conftest import PlatformFactory

pytestmark = [pytest.mark.fault, pytest.mark.docker, pytest.mark.slow]

APP = "web"
QUOTA = 64 * 2**20
FILL = "RUN i=0; while true; do i=$((i+1)); head -c 8388608 /dev/zero > /f$i; sleep 0.1; done\n"


class Poller(threading.Thread):
    """GETs the app through Traefik every 50 ms; counts each answer as status + body."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(daemon=True)
        self.platform, self.halt, self.seen = platform, threading.Event(), Counter[str]()

    def run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.halt.wait(0.05):
                try:
                    r = client.get(self.platform.traefik.url + "/", headers={"Host": self.platform.host(APP)})
                    self.seen[f"{r.status_code} {r.text.split()[0] if r.status_code == 200 else r.text[:60]}"] += 1
                except httpx.HTTPError as exc:
                    self.seen[type(exc).__name__] += 1


def test_a_build_filling_the_disk_fails_and_the_app_keeps_serving(
    make_platform: PlatformFactory, traefik: TraefikProcess
) -> None:
    with make_platform("quota", traefik, build_disk_bytes=QUOTA) as platform:
        t = platform.tenant
        assert t.post("/v1/apps", json={"name": APP, "port": 8080, "health_check_path": "/healthz"}).status_code == 201
        first = platform.wait(APP, platform.deploy(APP, tar_gz(source("1.0"))))
        assert first["status"] == "running", first
        assert platform.get(APP).text.strip().startswith("version=1.0")

        poller = Poller(platform)
        poller.start()
        try:
            began = time.monotonic()
            dep = platform.deploy(APP, tar_gz(source("2.0", extra_steps=FILL)))
            failed = platform.wait(APP, dep)
            print(f"\nfailed {time.monotonic() - began:.1f}s after the deploy request: {failed['reason']}")
        finally:
            poller.halt.set()
            poller.join()

        assert failed["status"] == "failed", failed
        reason = failed["reason"]
        assert re.match(r"the build failed: it wrote \d+ MiB to disk in step \d+/\d+ \(RUN i=0; while true", reason), reason
        assert "more than the build disk quota of 64 MiB (MOORAGE_BUILD_DISK_BYTES)" in reason
        assert "ask the operator to raise the quota" in reason
        written = int(re.search(r"wrote (\d+) MiB", reason)[1])  # type: ignore[index]
        assert 64 <= written < 128, reason
        log = t.get(f"/v1/apps/{APP}/deployments/{dep}/logs").text
        assert "moorage: build stopped: it wrote" in log and f"failed: {reason}" in log

        # The previous release served every request, and is the app's only container.
        assert set(poller.seen) == {"200 version=1.0"}, poller.seen
        assert sum(poller.seen.values()) > 20, poller.seen
        client = docker.from_env()
        try:
            apps = client.containers.list(
                all=True, filters={"label": [f"moorage.tenant={platform.tenant_name}", "moorage.role=app"]}
            )
            assert len(apps) == 1 and apps[0].status == "running", apps
            # No build step container, tag or refused layer left.
            steps = re.findall(r"^ ---> Running in ([0-9a-f]{12})$", log, flags=re.MULTILINE)
            assert steps and not [s for s in steps if client.containers.list(all=True, filters={"id": s})]
            with pytest.raises(docker.errors.ImageNotFound):
                client.images.get(f"moorage-apps/{platform.tenant.tenant_id}/{APP}:{dep}")
        finally:
            client.close()

        # Nothing was lost: the next normal deployment runs.
        third = platform.wait(APP, platform.deploy(APP, tar_gz(source("3.0"))))
        assert third["status"] == "running", third
        assert platform.get(APP).text.strip().startswith("version=3.0")
