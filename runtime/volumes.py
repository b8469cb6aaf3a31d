"""App volumes on the host: Docker named volumes that keep an app's files from one container
to the next (redeploys, rollbacks, restarts, a control plane or host restart).

Two kinds, fixed per volume when it is made:

- **enforced**: an ext4 filesystem in a sparse image file ``<root>/<id>.img`` (mode 0600) on
  a loop device, under a Docker ``local`` volume of ``type=ext4``. The filesystem is the quota:
  a write past its size fails with ENOSPC inside the container. dockerd mounts the device
  itself with mount(2) (``o=loop`` would need mount(8)), so the loop device is ours to attach,
  and ours to attach again: loop devices do not survive a reboot. The Docker volume names the
  device through a link of ours, ``<root>/<id>.dev``, which ``attach`` (run before every
  container start) points at the image's current loop device: the volume's options never
  change, and a device number reused by another image after a reboot is never mounted under
  this volume's name. Needs root (CAP_SYS_ADMIN) for losetup.
- **measured**: a plain Docker named volume; what it holds is measured, not bounded.

dockerd mounts a volume once however many containers use it (and unmounts it after the last
one stops); containers get bind mounts of that one mount.

Both kinds start empty (the ext4 one without ``lost+found``), so Docker copies what the image
has at the mount path into the volume on first use, as it does for any named volume.

Identity: the Docker volume is named from the volume's id (``moorage-vol-<id>``) and carries
moorage's labels plus ``vol.moorage/id``; an existing one is adopted only when its labels say
it is this very volume. Every subprocess runs with a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors
import structlog

from runtime import labels as L
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded
from runtime.volume_usage import each_volume_bytes

log = structlog.get_logger("moorage.runtime.volumes")

ROLE = "app-volume"
ID_LABEL = "vol.moorage/id"  # not `moorage.`-prefixed: those are identity labels only runtime.labels sets
NAME_PREFIX = "moorage-vol-"
MiB = 2**20
# Mount flags dockerd applies: device files and set-uid bits on the volume mean nothing, and
# `discard` gives blocks of deleted files back to the host (holes in the sparse image).
ENFORCED_MOUNT_OPTIONS = "nodev,nosuid,discard"
_VOLUME_ID = re.compile(r"vol_[0-9a-z]{10,40}")


class VolumeError(RuntimeError):
    """A volume operation failed; the message says what to do."""


class VolumeHostError(VolumeError):
    """This host cannot make enforced volumes (not root, or a tool missing)."""


class VolumeStorageMissing(VolumeError):
    """The volume's data (image file or Docker volume) is gone: never replaced by an empty one."""


class VolumeInUse(VolumeError):
    """A container still uses the volume (even a stopped one keeps it referenced)."""


class NameHeldByAnother(VolumeError):
    """A Docker volume has this volume's name but its labels say it is another's."""


def is_volume_id(value: str) -> bool:
    return _VOLUME_ID.fullmatch(value) is not None


def docker_name(volume_id: str) -> str:
    if not is_volume_id(volume_id):
        raise ValueError(f"volume id {volume_id!r} is not a moorage volume id")
    return f"{NAME_PREFIX}{volume_id}"


def volume_id_of(name: str) -> str | None:
    """The volume id in a Docker volume name of ours, else None."""
    vid = name.removeprefix(NAME_PREFIX)
    return vid if name.startswith(NAME_PREFIX) and is_volume_id(vid) else None


@dataclass(frozen=True)
class VolumeSpec:
    id: str
    tenant: str  # names, for the labels
    app: str
    size_mb: int
    enforced: bool
    labels: Mapping[str, str] = field(default_factory=dict)  # extra, non-`moorage.` (the control plane's instance)

    @property
    def name(self) -> str:
        return docker_name(self.id)

    def object_labels(self) -> dict[str, str]:
        return L.moorage_labels(self.tenant, self.app, role=ROLE, extra={**self.labels, ID_LABEL: self.id})


# -- enforced storage: image files and loop devices ---------------------------------------------
class LoopImages:
    """ext4 image files under ``root``, their loop devices and the stable links to them."""

    def __init__(self, root: Path, *, timeout: float = 60.0) -> None:
        self.root = root
        self.timeout = timeout
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def image(self, volume_id: str) -> Path:
        docker_name(volume_id)  # a path made from anything but an id would be a traversal
        return self.root / f"{volume_id}.img"

    def link(self, volume_id: str) -> Path:
        return self.root / f"{volume_id}.dev"

    def make(self, volume_id: str, size_mb: int) -> None:
        """A sparse image of ``size_mb`` MiB holding an empty ext4 filesystem."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        image = self.image(volume_id)
        try:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise VolumeError(f"an image file for {volume_id} exists already; it was left alone") from None
        try:
            try:
                os.ftruncate(fd, size_mb * MiB)
            finally:
                os.close(fd)
            # No reserved blocks: the volume's size is all the app's. Without lost+found the
            # filesystem is empty, so Docker copies the image's files at the mount path in.
            self._run("mkfs.ext4", "-q", "-F", "-m", "0", "-L", volume_id[-16:], str(image))
            self._run("debugfs", "-w", "-R", "rmdir lost+found", str(image))
        except BaseException:
            image.unlink(missing_ok=True)
            raise

    def attach(self, volume_id: str) -> str:
        """The image's loop device (attached now if it has none), with the link pointing at it."""
        image = self.image(volume_id)
        with self._locked(volume_id):
            if not image.exists():
                raise VolumeStorageMissing(
                    f"the image file of volume {volume_id} is gone, so its data is lost; delete the volume and create it again"
                )
            devices = self.devices_of(volume_id)
            # -L: the kernel's own check that the file is not attached twice (two mounts of one ext4 would corrupt it).
            device = devices[0] if devices else self._run("losetup", "-f", "--show", "-L", str(image)).strip()
            self._point_link(volume_id, device)
            return device

    def devices_of(self, volume_id: str) -> list[str]:
        image = self.image(volume_id)
        if not image.exists():
            return []
        listed = json.loads(self._run("losetup", "--json", "-l", "-O", "NAME,BACK-FILE", "-j", str(image)) or "{}")
        return [str(d["name"]) for d in listed.get("loopdevices", [])]

    def remove(self, volume_id: str) -> bool:
        """Detach its loop devices, remove the image and the link; False when there was nothing."""
        image, link = self.image(volume_id), self.link(volume_id)
        with self._locked(volume_id):
            devices = {*self.devices_of(volume_id), *(d for d, vid in self.attached().items() if vid == volume_id)}
            for device in sorted(devices):
                self.detach(device)
            existed = image.exists() or bool(devices)
            image.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
            (self.root / f"{volume_id}.lock").unlink(missing_ok=True)
        return existed

    def detach(self, device: str) -> None:
        # A device still mounted is marked to detach when unmounted (autoclear): never an error.
        self._run("losetup", "-d", device)

    def attached(self) -> dict[str, str]:
        """Loop device -> volume id, for every device backed by an image under ``root``
        (one whose image was deleted too)."""
        try:
            listed = json.loads(self._run("losetup", "--json", "-l", "-O", "NAME,BACK-FILE") or "{}")
        except VolumeHostError:
            return {}
        found = {}
        for device in listed.get("loopdevices", []):
            back = str(device.get("back-file") or "").removesuffix(" (deleted)")
            path = Path(back)
            if path.parent == self.root and path.suffix == ".img" and is_volume_id(path.stem):
                found[str(device["name"])] = path.stem
        return found

    def owned(self) -> dict[str, float]:
        """Volume id -> when its storage was last made or touched (seconds since the epoch)."""
        found: dict[str, float] = {}
        if self.root.is_dir():
            for path in [*self.root.glob("vol_*.img"), *self.root.glob("vol_*.dev")]:
                if is_volume_id(path.stem):
                    with contextlib.suppress(FileNotFoundError):
                        made = path.lstat().st_ctime
                        found[path.stem] = max(found.get(path.stem, 0.0), made)
        for volume_id in self.attached().values():
            found.setdefault(volume_id, 0.0)  # a device whose image is gone: nothing to wait for
        return found

    # -- inside -------------------------------------------------------------------------------
    def _point_link(self, volume_id: str, device: str) -> None:
        link = self.link(volume_id)
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == device:
                return
        staging = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}")
        staging.unlink(missing_ok=True)
        os.symlink(device, staging)
        os.replace(staging, link)  # atomic: dockerd reads the old device or the new, never nothing

    @contextlib.contextmanager
    def _locked(self, volume_id: str) -> Iterator[None]:
        """One attach or removal of a volume at a time, in this process and across processes."""
        with self._locks_guard:
            lock = self._locks.setdefault(volume_id, threading.Lock())
        with lock:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.root / f"{volume_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _run(self, *argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise VolumeHostError(
                f"{argv[0]} is not installed; enforced volumes need util-linux and e2fsprogs "
                "(or set MOORAGE_VOLUME_QUOTA=measured)"
            ) from None
        except subprocess.TimeoutExpired:
            raise VolumeError(f"{argv[0]} did not finish within {self.timeout:.0f}s") from None
        if done.returncode != 0:
            error = (done.stderr or done.stdout).strip().splitlines()
            reason = error[-1] if error else f"exit {done.returncode}"
            if "permission denied" in reason.lower() or "operation not permitted" in reason.lower():
                raise VolumeHostError(
                    f"{argv[0]} was refused ({reason}): enforced volumes need a control plane running as root "
                    "(CAP_SYS_ADMIN); run it as root or set MOORAGE_VOLUME_QUOTA=measured"
                )
            raise VolumeError(f"{argv[0]} failed: {reason}")
        return done.stdout


# -- Docker volumes -----------------------------------------------------------------------------
class Volumes:
    """The Docker side of app volumes, enforced ones on ``loops``."""

    def __init__(self, engine: DockerEngine, loops: LoopImages) -> None:
        self.engine = engine
        self.guard = engine.guard
        self.loops = loops
        self._mountpoints: dict[str, str] = {}

    @property
    def _client(self) -> docker.DockerClient:
        return self.engine.client

    def create(self, spec: VolumeSpec) -> None:
        """The volume's storage; nothing is left when this raises."""
        if self._inspect(spec.name) is not None:  # ids are new: whatever has the name was not made for this one
            raise NameHeldByAnother(f"a Docker volume named {spec.name} exists already; it was left alone")
        if spec.enforced:
            self.loops.make(spec.id, spec.size_mb)
        try:
            if spec.enforced:
                self.loops.attach(spec.id)
            self._ensure_docker_volume(spec)
        except BaseException:
            with contextlib.suppress(Exception):
                if self._inspect(spec.name) is not None:
                    self._remove_docker_volume(spec.name)
            with contextlib.suppress(Exception):
                self.loops.remove(spec.id)
            raise
        log.info("volume.created", volume=spec.name, enforced=spec.enforced, size_mb=spec.size_mb)

    def prepare(self, spec: VolumeSpec) -> str:
        """Before a container start: the loop device attached (after a reboot too), the Docker
        volume there. Its name. Lost data is never replaced by an empty volume."""
        if spec.enforced:
            self.loops.attach(spec.id)
        found = self._inspect(spec.name)
        if found is None:
            if not spec.enforced:
                raise VolumeStorageMissing(
                    f"the Docker volume {spec.name} is gone, so its data is lost; delete the volume and create it again"
                )
            self._ensure_docker_volume(spec)  # the data is in the image: only Docker's record of it is made again
        elif not _is_own(found, spec.id, spec.tenant):
            raise NameHeldByAnother(f"a Docker volume named {spec.name} exists but is not this volume; it was left alone")
        return spec.name

    def prepare_existing(self, name: str) -> None:
        """Before a stopped container starts again: its enforced volume's loop device attached."""
        volume_id = volume_id_of(name)
        if volume_id is not None and self.loops.image(volume_id).exists():
            self.loops.attach(volume_id)

    def remove(self, volume_id: str) -> bool:
        """The Docker volume, loop devices and image file; False when none was there.
        ``VolumeInUse`` while a container (even a stopped one) uses it."""
        name = docker_name(volume_id)
        found = self._inspect(name)
        removed = False
        if found is not None:
            if (found.get("Labels") or {}).get(ID_LABEL) != volume_id:
                log.warning("volume.not_ours", volume=name)
                return False
            removed = self._remove_docker_volume(name)
        self._mountpoints.pop(name, None)
        return self.loops.remove(volume_id) or removed

    def owned(self, labels: Mapping[str, str]) -> dict[str, float]:
        """Volume id -> creation time of every volume carrying ``labels`` (the control plane's
        instance), and of every image file or loop device of ours."""
        found = dict(self.loops.owned())
        for volume in self._list(labels):
            volume_id = (volume.get("Labels") or {}).get(ID_LABEL, "")
            if is_volume_id(volume_id):
                found[volume_id] = max(found.get(volume_id, 0.0), _timestamp(str(volume.get("CreatedAt", ""))))
        return found

    def used_bytes(self, volumes: Mapping[str, bool]) -> dict[str, int | None]:
        """What each volume (id -> enforced) holds now; None where it cannot be told: an
        enforced volume no container has mounted, a volume that is gone."""
        found: dict[str, int | None] = {}
        measured = []
        for volume_id, enforced in volumes.items():
            name = docker_name(volume_id)
            volume = self._inspect(name)
            if volume is None:
                found[volume_id] = None
            elif enforced:
                found[volume_id] = _mounted_bytes(str(volume.get("Mountpoint") or ""))
            else:
                measured.append(name)
        if measured:  # one disk-usage report for all of them, where their directories are not readable
            sizes = self.guard.call(each_volume_bytes, self._client.api, measured, self._mountpoints, idempotent=True)
            found.update({vid: sizes.get(name) for name in measured if (vid := volume_id_of(name))})
        return found

    # -- inside -------------------------------------------------------------------------------
    def _ensure_docker_volume(self, spec: VolumeSpec) -> None:
        found = self._inspect(spec.name)
        if found is not None:
            if not _is_own(found, spec.id, spec.tenant):
                raise NameHeldByAnother(f"a Docker volume named {spec.name} exists but is not this volume; it was left alone")
            return
        opts = {"type": "ext4", "device": str(self.loops.link(spec.id)), "o": ENFORCED_MOUNT_OPTIONS} if spec.enforced else None
        self._create(spec.name, opts, spec.object_labels())

    @guarded(idempotent=True)
    def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.api.inspect_volume(name))
        except docker.errors.NotFound:
            return None

    @guarded(idempotent=False)
    def _create(self, name: str, opts: dict[str, str] | None, labels: dict[str, str]) -> None:
        self._client.api.create_volume(name, driver="local", driver_opts=opts, labels=labels)

    @guarded(idempotent=True)
    def _remove_docker_volume(self, name: str) -> bool:
        try:
            self._client.api.remove_volume(name)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise VolumeInUse(f"a container still uses volume {name}; remove it first") from None
            raise
        return True

    @guarded(idempotent=True)
    def _list(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        filters = [f"{L.MANAGED}=true", f"{L.ROLE}={ROLE}", *(f"{k}={v}" for k, v in labels.items())]
        return list(self._client.api.volumes(filters={"label": filters}).get("Volumes") or [])


def _mounted_bytes(mountpoint: str) -> int | None:
    """Blocks in use in an enforced volume's filesystem, while dockerd has it mounted."""
    if not mountpoint or not os.path.ismount(mountpoint):
        return None
    stats = os.statvfs(mountpoint)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def _is_own(volume: Mapping[str, Any], volume_id: str, tenant: str) -> bool:
    labels = volume.get("Labels") or {}
    return labels.get(L.MANAGED) == "true" and labels.get(ID_LABEL) == volume_id and labels.get(L.TENANT) == tenant


def _timestamp(created: str) -> float:
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return time.time()  # unreadable: as if just made, so no sweep takes it for an old orphan
