"""The Builder protocol and what every builder shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class BuilderUnavailable(RuntimeError):
    """The builder cannot run on this host (e.g. the nixpacks CLI is not installed); the
    message says how to fix it."""


class BuildCancelled(RuntimeError):
    """The caller asked to stop; the build stream was closed (dockerd stops the build)."""


class BuildError(RuntimeError):
    """The build itself failed (a Dockerfile step): the tenant's problem, not the engine's."""

    def __init__(self, message: str, log: list[str]) -> None:
        super().__init__(message)
        self.log = log


class BuildTimeout(BuildError):
    pass


@dataclass(frozen=True)
class BuildRequest:
    source: Path  # the extracted/cloned source tree
    tag: str
    tenant: str
    app: str
    timeout: float
    on_line: Callable[[str], None] = lambda line: None
    cancelled: Callable[[], bool] = lambda: False
    work_dir: Path | None = None  # scratch space (nixpacks' --out), default: next to source
    release: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Called with the Dockerfile's text just before the image is built (after Nixpacks wrote
    # its plan): returns the text to build, or raises to refuse the build. The caller's policy.
    prepare_dockerfile: Callable[[str], str] | None = None
    # The Docker network the RUN steps join (None: the daemon's default bridge).
    network: str | None = None


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag: str
    builder: str


class Builder(Protocol):
    name: str

    def build(self, request: BuildRequest) -> BuiltImage: ...


def select_builder(choice: str, source: Path) -> str:
    """``auto``: the app's Dockerfile when it has one, else Nixpacks."""
    if choice in ("dockerfile", "nixpacks"):
        return choice
    if choice != "auto":
        raise ValueError(f"unknown builder {choice!r}")
    return "dockerfile" if (source / "Dockerfile").is_file() else "nixpacks"
