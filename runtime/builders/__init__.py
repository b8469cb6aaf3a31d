"""Builders turn a source tree into an image. One protocol, two implementations:
``dockerfile`` (the app's own Dockerfile) and ``nixpacks`` (the Nixpacks CLI generates one).
``select_builder`` resolves the app's ``builder`` field (``auto``: Dockerfile if present)."""

from runtime.builders.base import (
    BuildCancelled,
    Builder,
    BuildError,
    BuilderUnavailable,
    BuildRequest,
    BuildTimeout,
    BuiltImage,
    select_builder,
)

__all__ = [
    "BuildCancelled",
    "BuildError",
    "BuildRequest",
    "BuildTimeout",
    "Builder",
    "BuilderUnavailable",
    "BuiltImage",
    "select_builder",
]
