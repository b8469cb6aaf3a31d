"""Images: build from a context directory with streamed log lines, inspect, remove, prune.

Builds use the classic builder API over the docker SDK. Its RUN steps are containers the
daemon makes with its `default-runtime`, which deploy/host-setup.sh sets to runsc: the
classic builder has no runtime parameter of its own, and BuildKit (which has none either)
is never asked for. `network` puts the steps on a network of the caller's (the deploy job's
per-build network) instead of the daemon's default bridge. Every image moorage builds carries
`moorage.managed=true` (+ tenant/app/release); base images imported by host-setup carry
`moorage.base-image` instead, so pruning never touches them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import structlog

from runtime import labels as L
from runtime.build_watchdog import BuildWatchdog, Overrun
from runtime.builders.base import (  # re-exported: raised by the builds here
    BuildError,
    BuildTimeout,
)
from runtime.docker_engine import DockerEngine
from runtime.resilience import guarded

logger = structlog.get_logger("moorage.runtime.builds")


class BuildDiskQuotaExceeded(BuildError):
    """The build wrote more than its disk quota: the step was killed, its image refused."""

    def __init__(self, overrun: Overrun, quota: int, log: list[str]) -> None:
        self.written, self.quota, self.step = overrun.written, quota, overrun.step
        number, _, instruction = overrun.step.partition(" : ")
        where = f" in step {number} ({_short(instruction)})" if overrun.step else ""
        super().__init__(
            f"it wrote {_mib(overrun.written)} to disk{where}, more than the build disk quota of {_mib(quota)} "
            "(MOORAGE_BUILD_DISK_BYTES), so it was stopped; make the build write less (delete caches and "
            "temporary files in the same RUN step that makes them) or ask the operator to raise the quota",
            log,
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


LOG_TAIL = 2000  # lines a BuildError keeps: enough to show why, bounded however much a build prints


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


def _lines(chunk: dict[str, Any], log: deque[str], watchdog: BuildWatchdog) -> Iterator[str]:
    for line in str(chunk.get("stream", "")).splitlines():
        if line.strip():
            log.append(line)
            watchdog.observe(line)
            yield line


def _info(img: Any) -> ImageInfo:
    a = img.attrs
    return ImageInfo(
        id=img.id,
        tags=list(img.tags),
        labels=dict((a.get("Config") or {}).get("Labels") or {}),
        size=int(a.get("Size", 0)),
        created=str(a.get("Created", "")),
    )


class Images:
    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.guard = engine.guard

    @guarded(idempotent=False)
    def _start_build(
        self,
        context_dir: Path,
        tag: str,
        labels: dict[str, str],
        dockerfile: str | None,
        buildargs: Mapping[str, str] | None,
        network: str | None,
    ) -> Iterator[dict[str, Any]]:
        s = self.engine.settings
        return self.engine.client.api.build(
            path=str(context_dir),
            tag=tag,
            dockerfile=dockerfile,
            labels=labels,
            decode=True,
            rm=True,
            forcerm=True,
            pull=False,
            buildargs=dict(buildargs or {}),
            network_mode=network,
            container_limits={"memory": s.build_memory_bytes, "memswap": s.build_memory_bytes},
        )

    def build_stream(
        self,
        context_dir: Path,
        tag: str,
        *,
        tenant: str,
        app: str,
        release: str | None = None,
        dockerfile: str | None = None,
        buildargs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        labels: Mapping[str, str] | None = None,
        network: str | None = None,
    ) -> Generator[str, None, str]:
        """Yield build log lines as they arrive; returns (StopIteration.value) the image id.
        Raises BuildError on a failed step, BuildTimeout past the deadline and
        BuildDiskQuotaExceeded past the disk quota (a BuildWatchdog kills the running step;
        closing the stream early makes dockerd cancel the build)."""
        labels = L.moorage_labels(tenant, app, release, role="image", extra=labels)
        s = self.engine.settings
        limit = timeout or s.build_timeout
        watchdog = BuildWatchdog(
            self.engine.client.api, quota_bytes=s.build_disk_bytes, deadline=time.monotonic() + limit, name=tag
        ).start()
        log: deque[str] = deque(maxlen=LOG_TAIL)
        image_id, failure = "", ""
        stream: Any = None
        try:
            stream = self._start_build(Path(context_dir), tag, labels, dockerfile, buildargs, network)
            # After an overrun while a step runs, the stream is read on: the watchdog has killed
            # the step, dockerd reports it failed once its container is removed.
            for chunk in stream:
                if "error" in chunk:
                    failure = str(chunk.get("error", "")).strip()
                    log.append(failure)
                    yield failure
                    break
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                yield from _lines(chunk, log, watchdog)
                if watchdog.cancel:
                    break  # over quota at a commit: closing the stream cancels the next step
        finally:
            watchdog.stop()
            close = getattr(stream, "close", None)
            if close:
                close()
        if image_id and not failure:
            watchdog.committed(image_id)  # its whole chain, whatever the log said
        if watchdog.reason is not None:
            self._discard(tag, watchdog.refused)
            error = self._overrun_error(watchdog.reason, tag, limit, list(log))
            yield f"moorage: build stopped: {error}"
            raise error
        if failure:
            raise BuildError(f"build of {tag} failed: {failure}", list(log))
        return image_id or self.inspect(tag).id

    def _overrun_error(self, overrun: Overrun, tag: str, limit: float, log: list[str]) -> BuildError:
        if overrun.kind == "disk":
            return BuildDiskQuotaExceeded(overrun, self.engine.settings.build_disk_bytes, log)
        return BuildTimeout(f"build of {tag} exceeded its time limit of {limit:.0f}s", log)

    def _discard(self, tag: str, refused: list[str], patience: float = 10.0) -> None:
        """Remove what a stopped build committed at or after its overrun, its tag first (dockerd
        tags the last step's image even when the build was stopped meanwhile). Untagged parents
        go with it (noprune=False). A cancelled build's next step may still hold the image for
        a moment (409) until dockerd removes its container: retried for `patience` seconds."""
        api: Any = self.engine.client.api  # the low-level client: docker ships it untyped
        try:
            tagged = api.inspect_image(tag)["Id"]
        except docker.errors.APIError:
            tagged = None
        give_up = time.monotonic() + patience
        for ref in ([tag] if tagged in refused else []) + refused[::-1]:
            while True:
                try:
                    api.remove_image(ref, noprune=False)
                except docker.errors.NotFound:  # gone with its child already
                    pass
                except docker.errors.APIError as exc:
                    if exc.status_code == 409 and time.monotonic() < give_up:
                        time.sleep(0.2)
                        continue
                    logger.warning("refused_image_not_removed", image=ref, error=str(exc))
                break

    def build(
        self,
        context_dir: Path,
        tag: str,
        *,
        tenant: str,
        app: str,
        release: str | None = None,
        on_line: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> BuildResult:
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
        return self._summaries({"label": L.selector(**labels)})

    @guarded(idempotent=True)
    def list_dangling(self, label: str) -> list[ImageInfo]:
        """Untagged images carrying ``label`` that no other image builds on: what a build left
        besides its tagged result (a failed or stopped build's last step, a multi-stage build's
        earlier stages). Removing one removes its untagged parents with it, up to the first
        image that is tagged or has other children. ``created`` is in epoch seconds."""
        return self._summaries({"dangling": True, "label": label})

    def _summaries(self, filters: dict[str, Any]) -> list[ImageInfo]:
        # The summary list, one call: docker-py's images.list() inspects each image after
        # listing, and fails outright on one removed in between (a teardown running meanwhile).
        summaries = self.engine.client.api.images(filters=filters)
        return [
            ImageInfo(
                id=str(row["Id"]),
                tags=[tag for tag in row.get("RepoTags") or [] if tag != "<none>:<none>"],
                labels=dict(row.get("Labels") or {}),
                size=int(row.get("Size", 0)),
                created=str(row.get("Created", "")),
            )
            for row in summaries
        ]

    @guarded(idempotent=True)
    def prune_unreferenced(self, keep: frozenset[str] = frozenset(), **labels: str) -> list[str]:
        """Remove moorage-built images no container (running or stopped) uses, except `keep`
        (ids or tags, e.g. the current and previous release for rollback). Returns removed ids."""
        client = self.engine.client
        # Summaries, not docker-py's lists: those inspect each item after listing and fail
        # on one removed in between (a teardown or another prune running meanwhile).
        in_use = {c.get("ImageID") for c in client.api.containers(all=True)}
        removed: list[str] = []
        for img in self._summaries({"label": L.selector(**labels)}):
            img_id = img.id
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
