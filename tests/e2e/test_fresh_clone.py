"""A new user's first run, the README's way: a fresh clone, ``./deploy/dev.sh run`` (host
setup included), then the README's curl tour, its marked block run as it is, ending in the
example app served through the host's Traefik.

The clone is of this checkout's HEAD plus its uncommitted changes (tracked and untracked),
so the test checks what is about to be committed. It reuses the test run's virtual
environment (``MOORAGE_VENV``): installing a fresh one would take minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.router import OWNER_LINE
from tests.e2e.conftest import cleanup_tenant
from tests.live_server import free_port
from tests.runtime.helpers import RUN_ID

REPO = Path(__file__).resolve().parents[2]
TOUR_MARK = "<!-- tour:"
TOUR_TENANT = "acme"
# The tenant's name makes host-wide names (its Docker network, the app's hostname on the
# host's Traefik): this run's own, not one a person's tour on this host may hold.
TENANT = f"tour-{RUN_ID}"
ROUTE_DIR = Path("/var/lib/moorage/traefik/dynamic")  # host setup's, which dev.sh run uses


def readme_tour() -> str:
    readme = (REPO / "README.md").read_text()
    assert TOUR_MARK in readme, "README.md lost the tour's marker"
    block = re.match(r"[^\n]*\n```sh\n(.*?)^```", readme.split(TOUR_MARK, 1)[1], re.S | re.M)
    assert block, "the tour's marker is not followed by a ```sh block"
    return block.group(1)


def git(*args: str, cwd: Path = REPO, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, check=True, capture_output=True, timeout=60).stdout


def fresh_clone(dest: Path) -> Path:
    git("clone", "--quiet", "--no-checkout", str(REPO), str(dest))
    git("checkout", "--quiet", "--detach", git("rev-parse", "HEAD").decode().strip(), cwd=dest)
    if patch := git("diff", "--binary", "HEAD"):
        git("apply", "--binary", "-", cwd=dest, stdin=patch)
    for name in git("ls-files", "--others", "--exclude-standard", "-z").decode().split("\0"):
        if name:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: a fresh clone needs one")
    return fresh_clone(tmp_path / "moorage")


class DevRun:
    def __init__(self, clone: Path, env: dict[str, str], log: Path) -> None:
        self.clone, self.env, self.log = clone, env, log
        self.url = f"http://127.0.0.1:{env['MOORAGE_PORT']}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["./deploy/dev.sh", "run"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dev.sh run exited {self.proc.returncode}:\n{self.output()[-4000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"dev.sh run did not serve within {timeout}s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def new_user_env(clone: Path, **settings: str) -> dict[str, str]:
    """A new user's environment: none of this run's MOORAGE_* settings, nor its PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_") and k != "PYTHONPATH"}
    env |= {"MOORAGE_VENV": sys.prefix, "MOORAGE_PORT": str(free_port()), "MOORAGE_DATA_DIR": str(clone / ".moorage")}
    # On a systemd host, host setup would point moorage.service at this temporary clone.
    return env | {"MOORAGE_INSTALL_UNITS": "0"} | settings


@pytest.fixture
def dev_run(clone: Path, tmp_path: Path) -> Iterator[DevRun]:
    run = DevRun(clone, new_user_env(clone), tmp_path / "dev-run.log")
    try:
        yield run
    finally:
        run.stop()  # first, so its reconciler brings nothing back
        cleanup_tenant(TENANT)
        instance = clone / ".moorage" / "instance-id"
        if instance.exists():  # its route files, should the tour have stopped before the app was gone
            owner = f"{OWNER_LINE}{instance.read_text().strip()}\n"
            for route in ROUTE_DIR.glob("*.yml"):
                if route.read_text(errors="replace").startswith(owner):
                    route.unlink(missing_ok=True)


@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="dev.sh run sets the host up only as root")
def test_a_fresh_clone_runs_the_readme_tour_to_an_app_served_through_traefik(dev_run: DevRun) -> None:
    started = time.monotonic()
    dev_run.wait_serving()
    up_s = time.monotonic() - started
    output = dev_run.output()
    assert "[host-setup]" in output and "host ready to deploy" in output, output[-4000:]
    ready = httpx.get(f"{dev_run.url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["problems"] == [], ready

    tour = readme_tour()
    assert f'"name":"{TOUR_TENANT}"' in tour and f"web.{TOUR_TENANT}.moorage.localhost" in tour
    ran = subprocess.run(
        ["bash", "-eux", "-c", tour.replace(TOUR_TENANT, TENANT)],
        cwd=dev_run.clone,
        env=dev_run.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = f"exit {ran.returncode}\n--- stdout\n{ran.stdout[-4000:]}\n--- stderr\n{ran.stderr[-4000:]}"
    report += f"\n--- dev.sh run\n{dev_run.output()[-3000:]}"
    assert ran.returncode == 0, report
    assert '"openapi":"3.1' in ran.stdout, report
    assert 'event: status\ndata: {"status": "running"' in ran.stdout, report  # the build log followed to the end
    assert ran.stdout.rstrip().splitlines()[-1] == "hello from examples/hello", report  # GREETING, through Traefik
    print(f"dev.sh run serving after {up_s:.1f}s; tour {time.monotonic() - started - up_s:.1f}s")


def test_dev_run_names_what_the_host_lacks_and_serves_anyway(clone: Path, tmp_path: Path) -> None:
    """Without host setup (not root, or MOORAGE_HOST_SETUP=0) and on a bare host: each
    missing piece and how to get it, then the API all the same."""
    bare = new_user_env(
        clone,
        MOORAGE_HOST_SETUP="0",
        MOORAGE_DOCKER_URL=f"unix://{tmp_path}/no-docker.sock",
        MOORAGE_TRAEFIK_URL=f"http://127.0.0.1:{free_port()}",
        MOORAGE_TRAEFIK_PING_ADDRESS=f"127.0.0.1:{free_port()}",
        MOORAGE_TRAEFIK_DYNAMIC_DIR=str(tmp_path / "no-routes"),
    )
    run = DevRun(clone, bare, tmp_path / "dev-run.log")
    try:
        run.wait_serving()
        ready = httpx.get(f"{run.url}/readyz", timeout=10).json()
    finally:
        run.stop()
    output = run.output()
    assert "[host-setup]" not in output and "the host is left as it is" in output, output
    assert "deployments will fail until these are fixed" in output and "serving the API anyway" in output, output
    for problem in ready["problems"]:  # the same list as /readyz, with what to do
        assert f"MISSING  {problem['component']}: {problem['detail']}" in output, output
        assert problem["remedy"] in output
    # Every host component is missing here; the store and the certificates (no domain yet) are fine.
    assert [p["component"] for p in ready["problems"]] == [c for c in ready["checks"] if c not in ("database", "certificates")]
    assert "sudo bash deploy/host-setup.sh" in output
