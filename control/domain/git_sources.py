"""Which git sources a tenant may deploy from.

git runs on the host, so a git URL is a request the host makes on the tenant's behalf:
``file://`` would read the host's own repositories and an ``https://`` host resolving to
loopback, a private network or a metadata address would reach services no tenant should.
So: https only (http only if the operator allows it), a plain host name or IP (no
credentials, no characters URL parsers disagree on), and every address the host resolves to
must be public unless it lies in the operator's allow-list. The job resolves again just
before cloning and pins git to exactly the addresses it checked (``http.curloptResolve``),
so a DNS answer that changes in between (rebinding) cannot move the clone elsewhere.

``file://`` is refused unless the operator names directories tenants may clone from
(``MOORAGE_GIT_FILE_PREFIXES``). Then the path is resolved (``..`` and every symlink, as
the kernel would follow them) and must lie under one of them; git is handed the resolved
path, so what it opens is what was checked.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from control.domain.errors import Invalid

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NETLOC = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?)(?::(?P<port>[0-9]{1,5}))?")


@dataclass(frozen=True)
class GitTarget:
    scheme: str
    host: str  # as curl will see it: lower case, IPv6 without brackets ("" for file://)
    port: int
    path: Path | None = None  # file:// only: the repository, every symlink resolved

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def literal(self) -> Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


class GitHostRefused(Exception):
    """The host resolves to an address the policy refuses; the message says what to do."""


def _field_error(message: str) -> Invalid:
    return Invalid(f"The git source is not acceptable: {message}.", errors=[{"field": "git.url", "message": message}])


def check_git_url(url: str, *, allow_http: bool, file_prefixes: Sequence[Path] = ()) -> GitTarget:
    """The URL's shape; raises Invalid (422) naming the field. ``file_prefixes``: resolved
    directories a file:// URL may point into (none: file:// is refused)."""
    schemes = ("https", "http") if allow_http else ("https",)
    allowed = " or ".join(f"{s}://" for s in schemes)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url) or len(url) > 2048:
        raise _field_error("the URL has spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _field_error("the URL could not be parsed") from None
    if parts.scheme.lower() == "file" and file_prefixes:
        return _check_file_url(parts, file_prefixes)
    if parts.scheme.lower() not in schemes:
        raise _field_error(
            f"only {allowed} repository URLs are allowed (file://, ssh://, git:// and "
            "others would make the host fetch on your behalf; file:// only from directories the operator "
            "allows, MOORAGE_GIT_FILE_PREFIXES)"
        )
    if "@" in parts.netloc:
        raise _field_error("credentials in the URL are not accepted; deploy from a public repository")
    match = _NETLOC.fullmatch(parts.netloc)
    if match is None:
        raise _field_error(f"the host {parts.netloc!r} is not a plain host name, IPv4 or [IPv6] address with an optional port")
    port = int(match["port"]) if match["port"] else (443 if parts.scheme.lower() == "https" else 80)
    if not 0 < port < 65536:
        raise _field_error(f"port {port} is out of range")
    return GitTarget(scheme=parts.scheme.lower(), host=match["host"].strip("[]").lower(), port=port)


def _check_file_url(parts: SplitResult, prefixes: Sequence[Path]) -> GitTarget:
    shown = ", ".join(str(p) for p in prefixes)
    if parts.netloc or parts.query or parts.fragment or "%" in parts.path or not parts.path.startswith("/"):
        raise _field_error("a file:// URL is file:///absolute/path with no host, query, fragment or %-escapes")
    resolved = Path(os.path.realpath(parts.path))  # '..' and every symlink, component by component
    if not any(resolved == root or resolved.is_relative_to(root) for root in prefixes):
        raise _field_error(
            f"file:// repositories must lie under {shown} (after resolving '..' and symlinks); "
            "this path does not, so nothing was fetched"
        )
    if not resolved.is_dir() or "%" in str(resolved):  # git would %-decode a resolved name that holds one
        raise _field_error("there is no repository at that path")
    return GitTarget(scheme="file", host="", port=0, path=resolved)


def _refused(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _allowed_by_operator(address: Address, networks: Sequence[Network]) -> bool:
    candidates: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a in n for a in candidates for n in networks if a.version == n.version)


Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def resolve_git_host(target: GitTarget, networks: Sequence[Network], resolver: Resolver | None = None) -> list[str]:
    """Every address the host resolves to, each allowed; else GitHostRefused. The job pins
    git to exactly these."""
    try:
        found = (resolver or system_resolver)(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise GitHostRefused(f"the git host {target.host!r} does not resolve ({exc}); check the URL") from None
    if not found:
        raise GitHostRefused(f"the git host {target.host!r} does not resolve; check the URL")
    for text in found:
        address = ipaddress.ip_address(text)
        if _refused(address) and not _allowed_by_operator(address, networks):
            raise GitHostRefused(
                f"the git host {target.host!r} resolves to {address}, an internal address (loopback, private, "
                "link-local, multicast or reserved), which deployments may not fetch from; use a repository on "
                "a public host, or ask the operator to allow that network (MOORAGE_GIT_ALLOWED_NETWORKS)"
            )
    return found


def check_git_source(url: str, ref: str, *, allow_http: bool, file_prefixes: Sequence[Path] = ()) -> GitTarget:
    """Shape of URL and ref together, every problem at once (422)."""
    errors: list[dict[str, str]] = []
    target: GitTarget | None = None
    try:
        target = check_git_url(url, allow_http=allow_http, file_prefixes=file_prefixes)
    except Invalid as exc:
        errors += exc.extra["errors"]
    if not ref or ref.startswith("-") or any(c.isspace() or ord(c) < 32 for c in ref) or len(ref) > 255:
        errors.append({"field": "git.ref", "message": "a branch, tag or commit (no spaces, not starting with '-')"})
    if errors or target is None:
        raise Invalid("The git source is not acceptable: " + "; ".join(e["message"] for e in errors) + ".", errors=errors)
    return target


def curl_resolve_entries(target: GitTarget, addresses: Sequence[str]) -> list[str]:
    """``http.curloptResolve`` values pinning the host to the checked addresses (an IP
    literal or a file:// path needs none: nothing is looked up)."""
    if target.is_file or target.literal is not None:
        return []
    shown = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
    return [f"{target.host}:{target.port}:{shown}"]
