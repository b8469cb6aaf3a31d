"""Keep credentials out of logs and exceptions: URLs lose their password, free text (a
client's stderr, a container's log tail) loses every known secret."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`postgres://app:s3cret@db-x:5432/app` -> `postgres://app:***@db-x:5432/app`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each (non-empty) secret; longest first so a secret that
    contains another is masked whole."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
