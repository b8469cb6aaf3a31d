"""App volumes on the real engine, runsc and the kernel's loop devices (``runtime.volumes``).

What the design rests on, checked here: an enforced volume's size is its filesystem's
(ENOSPC inside the container), dockerd mounts a volume once however many containers use it,
its data outlives every container and a detached loop device (a reboot), and nothing is left
once it is removed. And why apps with volumes deploy stop-then-start: a file lock taken in
one gVisor sandbox is not seen by another, so two containers on one volume cannot coordinate
their writes (SQLite's locking would not work between them)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import labels as L
from runtime.containers import Containers
from runtime.docker_engine import DockerEngine
from runtime.networks import TenantNetworks
from runtime.sandbox import Mount
from runtime.volumes import (
    ID_LABEL,
    LoopImages,
    NameHeldByAnother,
    Volumes,
    VolumeSpec,
    VolumeStorageMissing,
    docker_name,
)
from tests.runtime.helpers import BUSYBOX, PYTHON, RUN_ID, spec

pytestmark = pytest.mark.docker
TENANT = f"vols-{RUN_ID}"
INSTANCE = {"org.moorage.control-plane": f"test-{RUN_ID}"}


def _id(n: int) -> str:
    return f"vol_{RUN_ID}{n:018d}"


@pytest.fixture
def volumes(engine: DockerEngine, tmp_path: Path) -> Iterator[Volumes]:
    made = Volumes(engine, LoopImages(tmp_path / "volumes", timeout=30))
    yield made
    client = engine.client
    for c in client.containers.list(all=True, filters={"label": f"{L.TENANT}={TENANT}"}):
        c.remove(force=True)
    for volume_id in made.owned(INSTANCE):
        made.remove(volume_id)


@pytest.fixture(scope="module")
def network(networks: TenantNetworks) -> Iterator[str]:
    yield networks.ensure(TENANT).name
    networks.remove(TENANT)


def _spec(n: int, *, enforced: bool = True, size_mb: int = 8) -> VolumeSpec:
    return VolumeSpec(_id(n), TENANT, "web", size_mb, enforced, labels=INSTANCE)


def _sh(containers: Containers, network: str, volume: str, script: str, app: str = "web", image: str = BUSYBOX) -> str:
    """Run ``script`` in a sandboxed container with ``volume`` at /data; its output and exit code."""
    return _exec(containers, network, volume, ["sh", "-c", script], app=app, image=image)


def _exec(containers: Containers, network: str, volume: str, cmd: list[str], app: str = "web", image: str = BUSYBOX) -> str:
    info = containers.run(spec(TENANT, app, network, image=image, command=["sleep", "60"], mounts=(Mount(volume, "/data"),)))
    try:
        result = containers.exec(info.id, cmd)
        return f"{result.output.strip()} rc={result.exit_code}"
    finally:
        containers.remove(info.id, force=True)


def _mounts_of(device: str) -> list[str]:
    """The host's mounts of a block device (by number: the source column names our link)."""
    rdev = os.stat(device).st_rdev
    number = f"{os.major(rdev)}:{os.minor(rdev)}"
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[2] == number]


def test_an_enforced_volume_is_a_sparse_private_image_whose_size_is_its_filesystems(
    volumes: Volumes, containers: Containers, network: str
) -> None:
    s = _spec(1, size_mb=8)
    volumes.create(s)
    image = volumes.loops.image(s.id)
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert image.stat().st_size == 8 * 2**20 and image.stat().st_blocks * 512 < 8 * 2**20  # sparse
    assert volumes.loops.devices_of(s.id) and os.readlink(volumes.loops.link(s.id)) == volumes.loops.devices_of(s.id)[0]
    out = _sh(
        containers,
        network,
        s.name,
        "ls -A /data; dd if=/dev/zero of=/data/big bs=1M count=20 2>&1; echo size=$(wc -c < /data/big)",
    )
    assert "No space left on device" in out, out
    size = int(out.split("size=")[1].split()[0])
    assert 4 * 2**20 < size <= 8 * 2**20, out


def test_one_kernel_mount_however_many_containers_and_the_data_outlives_them(
    volumes: Volumes, containers: Containers, network: str
) -> None:
    s = _spec(2)
    volumes.create(s)
    [device] = volumes.loops.devices_of(s.id)
    mount = (Mount(s.name, "/data"),)
    first = containers.run(spec(TENANT, "web", network, command=["sleep", "60"], mounts=mount))
    second = containers.run(spec(TENANT, "web2", network, command=["sleep", "60"], mounts=mount))
    try:
        assert len(_mounts_of(device)) == 1, _mounts_of(device)  # dockerd mounted it once: both see one filesystem
        assert containers.exec(first.id, ["sh", "-c", "echo from-first > /data/note"]).exit_code == 0
        assert containers.exec(second.id, ["cat", "/data/note"]).output.strip() == "from-first"
    finally:
        containers.remove(first.id, force=True)
        containers.remove(second.id, force=True)
    assert _mounts_of(device) == []  # unmounted once the last one went
    assert "from-first" in _sh(containers, network, s.name, "cat /data/note")


def test_a_detached_loop_device_is_attached_again_before_the_next_start(
    volumes: Volumes, containers: Containers, network: str
) -> None:
    s = _spec(3)
    volumes.create(s)
    assert "rc=0" in _sh(containers, network, s.name, "echo kept > /data/f")
    for device in volumes.loops.devices_of(s.id):  # what a reboot does
        volumes.loops.detach(device)
    assert volumes.loops.devices_of(s.id) == []
    assert volumes.prepare(s) == s.name
    assert volumes.loops.devices_of(s.id)
    assert "kept" in _sh(containers, network, s.name, "cat /data/f")


def test_a_removed_volume_leaves_no_image_no_loop_device_and_no_docker_volume(volumes: Volumes, engine: DockerEngine) -> None:
    s = _spec(4)
    volumes.create(s)
    assert s.id in volumes.owned(INSTANCE)
    assert volumes.remove(s.id) is True
    assert not volumes.loops.image(s.id).exists() and not volumes.loops.link(s.id).exists()
    assert s.id not in volumes.loops.attached().values()
    assert volumes._inspect(s.name) is None
    assert s.id not in volumes.owned(INSTANCE)
    assert volumes.remove(s.id) is False
    with pytest.raises(VolumeStorageMissing):
        volumes.prepare(s)  # never an empty volume in place of lost data


def test_a_measured_volume_is_a_plain_docker_volume_whose_use_is_measured(
    volumes: Volumes, containers: Containers, network: str
) -> None:
    s = _spec(5, enforced=False, size_mb=1)
    volumes.create(s)
    found = volumes._inspect(s.name)
    assert found is not None and not found.get("Options") and found["Labels"][ID_LABEL] == s.id
    assert not volumes.loops.image(s.id).exists()
    assert "rc=0" in _sh(containers, network, s.name, "dd if=/dev/zero of=/data/big bs=1M count=3 2>&1")
    used = volumes.used_bytes({s.id: False})[s.id]
    assert used is not None and used >= 3 * 2**20  # over its size: only measured, the reconciler marks it full


def test_a_docker_volume_of_the_same_name_but_not_this_one_is_never_adopted(volumes: Volumes, engine: DockerEngine) -> None:
    s = _spec(6, enforced=False)
    engine.client.volumes.create(docker_name(s.id), labels={L.MANAGED: "true", L.TENANT: "someone-else", ID_LABEL: s.id})
    try:
        with pytest.raises(NameHeldByAnother):
            volumes.create(s)
        assert engine.client.volumes.get(docker_name(s.id)).attrs["Labels"][L.TENANT] == "someone-else"
    finally:
        engine.client.volumes.get(docker_name(s.id)).remove()


def test_file_locks_do_not_reach_across_gvisor_sandboxes(volumes: Volumes, containers: Containers, network: str) -> None:
    """Why a volume app's deploy stops the old container first: were both running, SQLite's
    locks would not keep them from writing the same database at once."""
    s = _spec(7, enforced=False)
    volumes.create(s)
    mount = (Mount(s.name, "/data"),)
    holder = containers.run(
        spec(
            TENANT,
            "holder",
            network,
            image=PYTHON,
            mounts=mount,
            command=[
                "python3",
                "-c",
                "import fcntl,time\nf=open('/data/lock','w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(60)",
            ],
        )
    )
    try:
        deadline = time.monotonic() + 10
        while "held" not in containers.logs(holder.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        probe = "import fcntl\nf=open('/data/lock','w')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB); print('taken')\nexcept OSError: print('refused')"
        out = _exec(containers, network, s.name, ["python3", "-c", probe], app="probe", image=PYTHON)
        assert "taken" in out, (
            f"a second sandbox was refused the lock ({out}): zero-downtime swaps of volume apps may be safe now"
        )
    finally:
        containers.remove(holder.id, force=True)
