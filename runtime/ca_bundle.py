"""Extra CA certificates that builds and app containers trust (``MOORAGE_BUILD_CA_BUNDLE``).

Behind a TLS-intercepting proxy (a corporate one, or this project's CI), ``pip install`` in a
build step fails with "self-signed certificate in certificate chain" unless the proxy's CA is
trusted inside the container. The operator names a PEM file; moorage makes one bundle of the
host's system roots plus those certificates and hands it to every container:

* builds: the bundle goes into the build context under a reserved name (``CONTEXT_NAME``),
  and after every ``FROM`` the Dockerfile that is built gets a ``COPY`` of it to ``TARGET``
  and one ``ARG`` line setting ``ENV_NAMES`` to that path. ``ARG`` values are the environment
  of the stage's ``RUN`` steps and are not kept in the image's config, so the tenant's own
  ``ENV`` still wins and the image's environment is what the Dockerfile says. (The classic
  builder has no secret mounts; build args alone are not seen by ``RUN`` steps unless a
  Dockerfile declares them.)
* app containers: the bundle is bind-mounted read-only at ``TARGET`` and ``ENV_NAMES`` point
  at it (an app's own env vars win).

Only certificate blocks are ever copied: a file holding a private key is refused outright
(an operator who points at a CA's key pair by mistake gets an error, not a key in every
image), and anything else in the file (comments, parameters) is dropped.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable
from pathlib import Path

from runtime.settings import LABEL_PREFIX

CONTEXT_NAME = ".moorage-ca-certificates.crt"  # reserved in a build context: a tenant's file of that name is replaced
TARGET = "/etc/ssl/certs/moorage-ca-certificates.crt"
ENV_NAMES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's; the host's own roots
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*?\n(?P<body>[A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


class CaBundleError(ValueError):
    """The bundle cannot be used; the message says why (never quoting the file's contents)."""


def certificates(pem: bytes, *, source: str) -> list[bytes]:
    """The certificate blocks of ``pem``, each normalised to 64-column PEM."""
    if _KEY.search(pem):
        raise CaBundleError(f"{source} holds a private key; give it only CA certificates (public), never a key")
    found: list[bytes] = []
    for match in _CERT.finditer(pem):
        try:
            der = base64.b64decode(b"".join(match["body"].split()), validate=True)
        except binascii.Error:
            raise CaBundleError(f"{source} has a certificate block that is not valid base64") from None
        if not der.startswith(b"\x30"):
            raise CaBundleError(f"{source} has a certificate block that is not a DER certificate")
        text = base64.b64encode(der)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        found.append(b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n")
    if not found:
        raise CaBundleError(f"{source} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


def _unique(blocks: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(blocks))


def combined(extra: Path, system: Path | None = SYSTEM_BUNDLE) -> bytes:
    """The host's system roots (when it has them) followed by the operator's certificates."""
    try:
        wanted = certificates(extra.read_bytes(), source=f"MOORAGE_BUILD_CA_BUNDLE ({extra})")
    except OSError as exc:
        raise CaBundleError(f"MOORAGE_BUILD_CA_BUNDLE ({extra}) cannot be read: {exc.strerror}") from None
    roots: list[bytes] = []
    if system is not None and system.is_file():
        roots = certificates(system.read_bytes(), source=str(system))
    return b"".join(_unique([*roots, *wanted]))


def write_combined(extra: Path, dest: Path, system: Path | None = SYSTEM_BUNDLE) -> Path:
    """``combined`` written atomically to ``dest`` (world-readable: public certificates)."""
    data = combined(extra, system)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def container_env(bundle: Path | None) -> dict[str, str]:
    """The variables an app container gets (before its own env vars, which win)."""
    return dict.fromkeys(ENV_NAMES, TARGET) if bundle is not None else {}


# -- builds ----------------------------------------------------------------------------------
_FROM = re.compile(r"[Ff][Rr][Oo][Mm][\t ]")
MOORAGE_LABEL = f"LABEL {LABEL_PREFIX}"  # the build policy's lineage label follows each FROM


def _injected() -> list[str]:
    args = " ".join(f"{name}={TARGET}" for name in ENV_NAMES)
    return [f"COPY {CONTEXT_NAME} {TARGET}", f"ARG {args}"]


def inject_into_dockerfile(text: str, *, after_prefix: str = MOORAGE_LABEL) -> str:
    """After every ``FROM`` (and the line right after it when it starts with ``after_prefix``,
    e.g. the build policy's lineage label, so the stage's cache chain is the tenant's from
    there), the lines that copy the bundle and point ``ENV_NAMES`` at it. Idempotent: a
    Dockerfile that already has them (a retried build) is returned as it is. ``text`` is one
    instruction per line (the build policy's canonical form)."""
    lines = text.split("\n")
    added = _injected()
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        if _FROM.match(lines[i].lstrip()):
            if after_prefix and i + 1 < len(lines) and lines[i + 1].startswith(after_prefix):
                i += 1
                out.append(lines[i])
            if lines[i + 1 : i + 1 + len(added)] != added:
                out.extend(added)
        i += 1
    return "\n".join(out)


def prepare_context(context: Path, dockerfile: str, bundle: Path, *, after_prefix: str = MOORAGE_LABEL) -> None:
    """Put the bundle into ``context`` under ``CONTEXT_NAME``, keep it out of the tenant's
    ``.dockerignore`` patterns, and rewrite ``dockerfile`` (a name inside ``context``) to use it."""
    target = context / CONTEXT_NAME
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            raise CaBundleError(f"{CONTEXT_NAME} is a name the platform reserves in the build context; rename that directory")
        target.unlink()
    target.write_bytes(bundle.read_bytes())
    os.chmod(target, 0o644)
    ignore = context / ".dockerignore"
    if ignore.is_symlink():
        raise CaBundleError(".dockerignore must be a regular file (not a link) at the root of the source")
    if ignore.is_file():
        patterns = ignore.read_text(encoding="utf-8", errors="replace")
        rule = f"!{CONTEXT_NAME}"
        if rule not in patterns.splitlines():
            ignore.write_text(patterns + ("" if patterns.endswith("\n") or not patterns else "\n") + rule + "\n")
    path = context / dockerfile
    text = path.read_text(encoding="utf-8")
    rewritten = inject_into_dockerfile(text, after_prefix=after_prefix)
    if rewritten != text:
        path.unlink()
        path.write_text(rewritten, encoding="utf-8")
