"""Images: build from a context directory with streamed log lines, inspect, remove, prune.

Builds use the classic builder API over the docker SDK. Every image moorage builds carries
`moorage.managed=true` (+ tenant/app/release); base images imported by host-setup carry
`moorage.base-image` instead, so pruning never touches them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from runtime import labels as L
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded


class BuildError(RuntimeError):
    """The build itself failed (a Dockerfile step): the tenant's problem, not the engine's."""

    def __init__(self, message: str, log: list[str]) -> None:
        super().__init__(message)
        self.log = log


class BuildTimeout(BuildError):
    pass


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: list[str]
    labels: dict[str, str]
    size: int
    created: str


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    tag: str
    log: list[str]


def _info(img: Any) -> ImageInfo:
    a = img.attrs
    return ImageInfo(id=img.id, tags=list(img.tags), labels=dict((a.get("Config") or {}).get("Labels") or {}),
                     size=int(a.get("Size", 0)), created=str(a.get("Created", "")))


class Images:
    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.guard = engine.guard

    @guarded(idempotent=False)
    def _start_build(self, context_dir: Path, tag: str, labels: dict[str, str],
                     dockerfile: str | None, buildargs: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        s = self.engine.settings
        return self.engine.client.api.build(
            path=str(context_dir), tag=tag, dockerfile=dockerfile, labels=labels, decode=True,
            rm=True, forcerm=True, pull=False, buildargs=dict(buildargs or {}),
            container_limits={"memory": s.build_memory_bytes, "memswap": s.build_memory_bytes},
        )

    def build_stream(self, context_dir: Path, tag: str, *, tenant: str, app: str,
                     release: str | None = None, dockerfile: str | None = None,
                     buildargs: Mapping[str, str] | None = None,
                     timeout: float | None = None) -> Generator[str, None, str]:
        """Yield build log lines as they arrive; returns (StopIteration.value) the image id.
        Raises BuildError on a failed step and BuildTimeout past the deadline (closing the
        stream makes dockerd cancel the build)."""
        labels = L.moorage_labels(tenant, app, release, role="image")
        deadline = time.monotonic() + (timeout or self.engine.settings.build_timeout)
        log: list[str] = []
        image_id = ""
        stream = self._start_build(Path(context_dir), tag, labels, dockerfile, buildargs)
        try:
            for chunk in stream:
                if time.monotonic() > deadline:
                    raise BuildTimeout(f"build of {tag} exceeded its time limit", log)
                if "error" in chunk:
                    msg = str(chunk.get("error", "")).strip()
                    log.append(msg)
                    yield msg
                    raise BuildError(f"build of {tag} failed: {msg}", log)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                for line in str(chunk.get("stream", "")).splitlines():
                    if line.strip():
                        log.append(line)
                        yield line
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
        return image_id or self.inspect(tag).id

    def build(self, context_dir: Path, tag: str, *, tenant: str, app: str,
              release: str | None = None, on_line: Callable[[str], None] | None = None,
              **kwargs: Any) -> BuildResult:
        """Build and wait; `on_line` gets each log line as it arrives."""
        gen = self.build_stream(context_dir, tag, tenant=tenant, app=app, release=release, **kwargs)
        log: list[str] = []
        while True:
            try:
                line = next(gen)
            except StopIteration as done:
                return BuildResult(image_id=str(done.value), tag=tag, log=log)
            log.append(line)
            if on_line:
                on_line(line)

    @guarded(idempotent=True)
    def inspect(self, ref: str) -> ImageInfo:
        return _info(self.engine.client.images.get(ref))

    @guarded(idempotent=True)
    def exists(self, ref: str) -> bool:
        try:
            self.engine.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    @guarded(idempotent=True)
    def remove(self, ref: str, force: bool = False) -> bool:
        try:
            self.engine.client.images.remove(ref, force=force, noprune=False)
        except docker.errors.ImageNotFound:
            return False
        return True

    @guarded(idempotent=True)
    def list_managed(self, **labels: str) -> list[ImageInfo]:
        return [_info(i) for i in self.engine.client.images.list(filters={"label": L.selector(**labels)})]

    @guarded(idempotent=True)
    def prune_unreferenced(self, keep: frozenset[str] = frozenset(), **labels: str) -> list[str]:
        """Remove moorage-built images no container (running or stopped) uses, except `keep`
        (ids or tags, e.g. the current and previous release for rollback). Returns removed ids."""
        client = self.engine.client
        in_use = {c.attrs.get("Image") for c in client.containers.list(all=True)}
        removed: list[str] = []
        for img in client.images.list(filters={"label": L.selector(**labels)}):
            img_id = str(img.id)
            if img_id in in_use or img_id in keep or keep.intersection(img.tags):
                continue
            try:
                client.images.remove(img_id, force=False)
            except docker.errors.APIError as exc:  # 409: in use by a container created meanwhile
                if exc.status_code not in (404, 409):
                    raise
                continue
            removed.append(img_id)
        return removed
