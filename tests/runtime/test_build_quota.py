"""The build watchdog against the real engine: a build that fills the disk is stopped at its
quota (while a step runs, at a commit, through a VOLUME, through its log), a silent step is
stopped at its deadline, a normal build is untouched, forged log lines kill nothing else, and
nothing is left behind (step containers, the tag, the refused layer, the watchdog thread)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from runtime.build_watchdog import BuildWatchdog
from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.images import BuildDiskQuotaExceeded, BuildError, BuildTimeout, Images
from runtime.networks import TenantNetworks
from runtime.resilience import BreakerRegistry
from runtime.settings import RuntimeSettings
from runtime.volume_usage import volume_bytes
from tests.runtime.helpers import BUSYBOX, RUN_ID, RUN_LABEL, run, spec, tenant_name

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MiB = 2**20
QUOTA = 64 * MiB
SLOW_FILL = "RUN i=0; while true; do i=$((i+1)); head -c 8388608 /dev/zero > /f$i; sleep 0.1; done"
RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12})$")


@pytest.fixture(scope="module")
def quota_images(runtime_settings: RuntimeSettings, engine: DockerEngine) -> Iterator[Images]:
    """Images whose builds may write 64 MiB (their own client: a build stream holds one)."""
    eng = DockerEngine(replace(runtime_settings, build_disk_bytes=QUOTA), registry=BreakerRegistry())
    yield Images(eng)
    eng.close()


class Build:
    """One build through `Images.build_stream`, its lines timed, its step containers sized from
    outside the watchdog (the test's own measurement), its leftovers checkable."""

    def __init__(self, images: Images, tmp_path: Path, steps: str, label: str) -> None:
        self.images, self.api = images, images.engine.client.api
        self.tenant = tenant_name(label)
        self.tag = f"moorage-test/{self.tenant}:1"
        self.context = tmp_path / label
        self.context.mkdir()
        (self.context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nLABEL {RUN_LABEL}={RUN_ID}\n{steps}\n")
        self.lines: list[str] = []
        self.steps: list[str] = []  # step container ids, as the builder printed them
        self.largest = 0  # the largest SizeRw seen by the test's own poller
        self.started = self.step_started = 0.0
        self._done = threading.Event()

    def run(self, **kwargs: object) -> str:
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        self.started = time.monotonic()
        try:
            stream = self.images.build_stream(self.context, self.tag, tenant=self.tenant, app="app", **kwargs)  # type: ignore[arg-type]
            while True:
                try:
                    line = next(stream)
                except StopIteration as done:
                    return str(done.value)
                self.lines.append(line)
                if m := RUNNING_IN.match(line):
                    self.steps.append(m[1])
                    self.step_started = self.step_started or time.monotonic()
        finally:
            self.elapsed = time.monotonic() - self.started
            self._done.set()
            poller.join()

    def _poll(self) -> None:
        while not self._done.wait(0.1):
            for cid in list(self.steps):
                for row in self.api.containers(all=True, size=True, filters={"id": cid}):
                    self.largest = max(self.largest, int(row.get("SizeRw") or 0))

    def leftover_containers(self, wait: float = 10.0) -> list[str]:
        deadline = time.monotonic() + wait
        while True:
            left = [cid for cid in self.steps if self.api.containers(all=True, filters={"id": cid})]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def cleanup(self) -> None:
        self.images.remove(self.tag, force=True)


def watchdog_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("build-watchdog-")]


def test_infinite_fill_is_killed_at_the_quota(quota_images: Images, tmp_path: Path) -> None:
    build = Build(quota_images, tmp_path, SLOW_FILL, "fill")
    with pytest.raises(BuildDiskQuotaExceeded) as stopped:
        build.run(timeout=120)
    error = stopped.value
    took = time.monotonic() - build.step_started
    print(
        f"\nkilled {took:.1f}s after the step started, having written {error.written / MiB:.0f} MiB "
        f"(the test saw {build.largest / MiB:.0f} MiB) of a {QUOTA // MiB} MiB quota"
    )
    assert isinstance(error, BuildError)  # control/jobs/deploy.py fails the deployment with it
    assert took < 10, f"the step ran {took:.1f}s"
    assert QUOTA < error.written < QUOTA + 64 * MiB and build.largest < QUOTA + 64 * MiB
    message = str(error)
    assert "more than the build disk quota of 64 MiB" in message and "MOORAGE_BUILD_DISK_BYTES" in message
    assert re.search(r"it wrote \d+ MiB to disk in step 3/\d+ \(RUN i=0; while true", message), message
    assert "make the build write less" in message and "ask the operator to raise the quota" in message
    assert any(line.startswith("moorage: build stopped: it wrote") for line in build.lines)
    # Nothing left: the step's container (and its writes), the tag, the watchdog.
    assert build.steps and build.leftover_containers() == []
    assert not quota_images.exists(build.tag)
    assert watchdog_threads() == []


def test_a_step_too_fast_for_a_poll_is_refused_at_its_commit(
    quota_images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No measurement of running steps at all: only the check at the commit can catch it.
    monkeypatch.setattr(BuildWatchdog, "_measure", lambda self: None)
    build = Build(quota_images, tmp_path, "RUN head -c 209715200 /dev/zero > /big\nRUN echo next-step-ran", "fast")
    with pytest.raises(BuildDiskQuotaExceeded) as stopped:
        build.run(timeout=120)
    assert 200 * MiB <= stopped.value.written < 201 * MiB, stopped.value.written
    assert "in step 3/" in str(stopped.value)
    committed = [line.split()[-1] for line in build.lines if re.fullmatch(r" ---> [0-9a-f]{12}", line)]
    big = committed[-1]  # the 200 MiB layer: refused and removed, the next step never reported
    assert not any(line.startswith("Step 4/") or "next-step-ran" in line for line in build.lines), build.lines
    assert not quota_images.exists(big) and not quota_images.exists(build.tag)
    assert build.leftover_containers() == []
    assert watchdog_threads() == []


def test_writes_to_a_volume_count(quota_images: Images, tmp_path: Path) -> None:
    """A RUN after VOLUME writes into an anonymous volume, outside the step's SizeRw."""
    fill = SLOW_FILL.replace("/f$i", "/data/f$i")
    build = Build(quota_images, tmp_path, f"VOLUME /data\n{fill}", "volume")
    with pytest.raises(BuildDiskQuotaExceeded) as stopped:
        build.run(timeout=120)
    assert QUOTA < stopped.value.written < QUOTA + 64 * MiB
    assert time.monotonic() - build.step_started < 15
    assert build.leftover_containers() == []


def test_log_output_counts(runtime_settings: RuntimeSettings, tmp_path: Path) -> None:
    """The control plane writes every log line to disk: a step printing forever is stopped."""
    engine = DockerEngine(replace(runtime_settings, build_disk_bytes=2 * MiB), registry=BreakerRegistry())
    build = Build(Images(engine), tmp_path, "RUN yes moorage-build-log-line", "yes")
    try:
        with pytest.raises(BuildDiskQuotaExceeded) as stopped:
            build.run(timeout=120)
        assert 2 * MiB < stopped.value.written < 4 * MiB
        assert len(stopped.value.log) <= 2000, "a failed build keeps only the tail of its log"
        assert build.leftover_containers() == []
    finally:
        engine.close()


def test_silent_step_times_out_at_its_deadline(quota_images: Images, tmp_path: Path) -> None:
    """No log line arrives while `sleep` runs: the watchdog, not the next chunk, stops it."""
    build = Build(quota_images, tmp_path, "RUN sleep 1000", "silent")
    with pytest.raises(BuildTimeout) as stopped:
        build.run(timeout=3)
    print(f"\ntimed out after {build.elapsed:.1f}s (limit 3s)")
    assert 3 <= build.elapsed < 5
    assert "exceeded its time limit of 3s" in str(stopped.value)
    assert build.leftover_containers() == []
    assert watchdog_threads() == []


def test_a_build_under_the_quota_is_untouched(quota_images: Images, tmp_path: Path) -> None:
    build = Build(
        quota_images,
        tmp_path,
        "RUN head -c 16777216 /dev/zero > /data && echo wrote-16-mib\nRUN head -c 16777216 /dev/zero > /more",
        "normal",
    )
    try:
        image_id = build.run(timeout=120)
        assert image_id.startswith("sha256:") and quota_images.exists(build.tag)
        assert any("wrote-16-mib" in line for line in build.lines)
        assert watchdog_threads() == []
    finally:
        build.cleanup()


def test_a_cancelled_build_stops_its_watchdog(quota_images: Images, tmp_path: Path) -> None:
    build = Build(quota_images, tmp_path, "RUN sleep 1000", "cancel")
    stream = quota_images.build_stream(build.context, build.tag, tenant=build.tenant, app="app", timeout=60)
    previous = ""
    for line in stream:
        if RUNNING_IN.match(line) and "RUN sleep 1000" in previous:
            break
        previous = line
    assert len(watchdog_threads()) == 1
    stream.close()  # what DockerfileBuilder does when the deployment is cancelled
    assert watchdog_threads() == []


def test_forged_log_lines_kill_nothing_else(
    quota_images: Images, containers: Containers, networks: TenantNetworks, tmp_path: Path
) -> None:
    """A step prints what the builder prints, naming another tenant's container: past the
    deadline the watchdog kills the build's own step only."""
    tenant = tenant_name("victim")
    victim = run(containers, spec(tenant, "db", networks.ensure(tenant).name, command=["sleep", "600"]))
    base = quota_images.engine.client.api.inspect_image(BUSYBOX)["Id"].split(":")[1][:12]
    try:
        forge = f'RUN echo " ---> {base}"; echo " ---> Running in {victim.id[:12]}"; sleep 1000'
        build = Build(quota_images, tmp_path, forge, "forge")
        with pytest.raises(BuildTimeout):
            build.run(timeout=4)
        assert build.steps[1] == victim.id[:12], build.lines  # the forged line did reach the watchdog
        assert containers.engine.client.containers.get(victim.id).status == "running"
        build.steps.remove(victim.id[:12])
        assert build.leftover_containers() == []
    finally:
        containers.remove(victim.id, force=True)
        networks.remove(tenant)


def test_volume_usage_walks_the_volume_or_asks_the_daemon(engine: DockerEngine) -> None:
    """Both ways of sizing a volume agree: the local walk (control plane beside dockerd) and
    the daemon's disk-usage report (a daemon on another host)."""
    client = engine.client
    name = f"moorage-test-{RUN_ID}-usage"
    client.volumes.create(name, labels={RUN_LABEL: RUN_ID})
    try:
        client.containers.run(
            BUSYBOX,
            ["sh", "-c", "head -c 3145728 /dev/zero > /v/a && mkdir /v/d && head -c 1048576 /dev/zero > /v/d/b"],
            volumes={name: {"bind": "/v", "mode": "rw"}},
            remove=True,
            labels={RUN_LABEL: RUN_ID},
        )
        walked = volume_bytes(client.api, [name], {})
        reported = volume_bytes(client.api, [name], {name: ""})  # no local path: the daemon's report
        assert walked == reported == 4 * MiB
    finally:
        client.volumes.get(name).remove(force=True)
