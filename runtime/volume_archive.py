"""A volume's files as a tar, through a container dockerd has created but never started:
``GET/PUT /containers/{id}/archive`` on such a container has dockerd mount its volumes and
read or write them itself, so no code of the tenant runs while its data is copied, and no
container of the tenant's has to be changed to do it.

Writing is all or nothing: the tar goes to ``<dest>.partial`` and takes its final name only
once complete (and synced).
"""

from __future__ import annotations

import os
from pathlib import Path

import docker.errors

from runtime.docker_engine import DockerEngine
from runtime.volumes import VolumeError

CHUNK = 1 << 20


def write_archive(engine: DockerEngine, container_id: str, path: str, dest: Path) -> int:
    """The directory ``path`` of the container as a tar at ``dest``; its size in bytes."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    size = 0
    try:
        stream, _ = engine.guard.call(
            lambda: engine.client.api.get_archive(container_id, path, chunk_size=CHUNK), idempotent=True
        )
        with partial.open("wb") as out:
            for chunk in stream:
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(dest)
    except docker.errors.APIError as exc:
        partial.unlink(missing_ok=True)
        raise VolumeError(f"the volume could not be read ({exc.explanation or exc})") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def read_archive(engine: DockerEngine, container_id: str, path: str, source: Path) -> None:
    """Unpack the tar at ``source`` into the container's directory ``path`` (dockerd does the
    unpacking, confined to the container's filesystem and volumes)."""
    try:
        with source.open("rb") as data:
            done = engine.guard.call(lambda: engine.client.api.put_archive(container_id, path, data), idempotent=False)
    except docker.errors.APIError as exc:
        raise VolumeError(f"the volume could not be filled ({exc.explanation or exc})") from None
    if not done:
        raise VolumeError(f"dockerd refused to unpack {source.name} into the volume")
