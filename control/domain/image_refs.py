"""Docker image references, normalised the way dockerd resolves them.

``python`` and ``docker.io/library/python:latest`` are the same image to the daemon, so an
allow-list has to compare normalised references, never the text a Dockerfile happens to use.
The grammar is distribution/reference's (the one dockerd parses with), reduced to what a
policy needs: domain, path, tag, digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
# What dockerd also accepts as an image *id*: a bare hex string of 3+ characters, optionally
# with its algorithm. A tag lookup comes first, then a search by id prefix across every image.
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{3,64}", re.IGNORECASE)


class BadReference(ValueError):
    pass


@dataclass(frozen=True)
class ImageRef:
    domain: str
    path: str
    tag: str | None  # None: no tag given (the daemon means "latest" unless a digest is given)
    digest: str | None

    @property
    def repository(self) -> str:
        return self.path if self.domain == DEFAULT_DOMAIN else f"{self.domain}/{self.path}"

    @property
    def effective_tag(self) -> str | None:
        return self.tag if self.tag is not None or self.digest else "latest"

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def looks_like_image_id(text: str) -> bool:
    return bool(_IMAGE_ID.fullmatch(text))


def parse(text: str) -> ImageRef:
    """Normalise ``text`` as dockerd does: ``python`` → ``docker.io/library/python`` (tag
    ``latest``); a first component with ``.`` or ``:``, ``localhost``, or one with upper-case
    letters names a registry."""
    bad = BadReference(f"{text!r} is not a valid image reference (lower-case repository, optional :tag)")
    if not text or len(text) > 255:
        raise bad
    name, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise bad
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, rest
        if not _DOMAIN.fullmatch(domain):
            raise bad
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in _LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if not _PATH.fullmatch(path):
        raise bad
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return ImageRef(domain=domain, path=path, tag=tag, digest=digest or None)


def matches(entry: ImageRef, ref: ImageRef) -> bool:
    """An allow-list entry with a tag allows exactly that tag; one without allows every tag
    and digest of its repository."""
    if (entry.domain, entry.path) != (ref.domain, ref.path):
        return False
    if entry.tag is None and entry.digest is None:
        return True
    if entry.digest is not None:
        return ref.digest == entry.digest
    return ref.digest is None and ref.effective_tag == entry.tag
