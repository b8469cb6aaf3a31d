"""Safe extraction of an uploaded source archive (tar.gz) into a build directory.

Everything an archive could use to escape or exhaust the host is refused before a byte of
it is written: absolute names and ``..`` (via ``tarfile.data_filter``, which also refuses
links pointing outside the tree, device files and set-uid bits), any symlink or hardlink
whose target leaves the tree, more than ``max_members`` entries, a decompression bomb
(the *decompressed* stream is counted as it is read, so a tiny archive that inflates to
gigabytes stops at ``max_bytes``), paths nested deeper than ``max_depth`` directories (also
through symlinks: the stdlib's directory creation and clean-up recurse once per level),
names too long for the filesystem, and names holding control characters (a newline in a
file name splits build logs and Dockerfile lines). On refusal the partial tree is removed.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path


class ArchiveRejected(ValueError):
    """The archive is unsafe or malformed; the message says which entry and why."""


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int = 500 * 1024 * 1024  # decompressed tar stream
    max_members: int = 20_000
    max_ratio: int = 200  # decompressed size / compressed size, beyond which it is a bomb
    max_depth: int = 64  # path components of an entry, where it really lands (symlinks followed)
    max_name_bytes: int = 1024  # a whole entry name (Linux allows 4096 for the full path, data dir included)


NAME_MAX_BYTES = 255  # one path component, as ext4, xfs and overlayfs allow
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))) | {"\u2028", "\u2029"}


class _CountingReader(io.RawIOBase):
    """Reads the decompressed stream and stops it past ``limit`` bytes."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveRejected(
                f"the archive expands to more than {self.limit} bytes (a decompression bomb or too large a source)"
            )
        buffer[: len(data)] = data
        return len(data)


def _inside(root: Path, target: str) -> bool:
    resolved = os.path.normpath(os.path.join(root, target))
    return resolved == str(root) or resolved.startswith(str(root) + os.sep)


def _shown(name: str) -> str:
    """The name as an error may quote it: escaped, and cut short (a refused name can be huge)."""
    return repr(name) if len(name) <= 100 else repr(name[:100]) + "..."


def _check_name(name: str, what: str, limits: ExtractLimits) -> None:
    if any(ch in _CONTROL for ch in name):
        raise ArchiveRejected(f"{what} {_shown(name)} has a control character in its name; rename it")
    depth = len([part for part in name.split("/") if part not in ("", ".")])
    if depth > limits.max_depth:
        raise ArchiveRejected(f"{what} {_shown(name)} is nested {depth} levels deep; at most {limits.max_depth} are allowed")
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES for part in name.split("/")):
        raise ArchiveRejected(f"{what} {_shown(name)} has a path component over {NAME_MAX_BYTES} bytes")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > limits.max_name_bytes:
        raise ArchiveRejected(f"{what} {_shown(name)} is {size} bytes long; names are at most {limits.max_name_bytes}")


def _check_real_depth(name: str, root: Path, limits: ExtractLimits) -> None:
    """Where the entry really lands, through symlinks extracted before it: a chain of links
    each a few levels deep must not build a tree deeper than the limit."""
    real = Path(os.path.realpath(os.path.join(root, name)))
    depth = len(real.relative_to(root).parts) if real.is_relative_to(root) else 0  # outside: refused already
    if depth > limits.max_depth:
        raise ArchiveRejected(
            f"entry {_shown(name)} lands {depth} levels deep through symlinks; at most {limits.max_depth} are allowed"
        )


def _check_member(member: tarfile.TarInfo, root: Path, limits: ExtractLimits) -> tarfile.TarInfo:
    name = member.name
    _check_name(name, "entry", limits)
    if member.issym() or member.islnk():
        _check_name(member.linkname, f"the target of link {_shown(name)},", limits)
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise ArchiveRejected(f"entry {name!r} has an absolute path")
    if ".." in Path(name).parts:
        raise ArchiveRejected(f"entry {name!r} climbs out of the tree with '..'")
    # A symlink's target is relative to the link's own directory; absolute targets always leave the tree.
    if member.issym() and (
        os.path.isabs(member.linkname) or not _inside(root, os.path.join(os.path.dirname(name), member.linkname))
    ):
        raise ArchiveRejected(f"symlink {name!r} points outside the source tree ({member.linkname!r})")
    if member.islnk() and (os.path.isabs(member.linkname) or not _inside(root, member.linkname)):
        raise ArchiveRejected(f"hardlink {name!r} points outside the source tree ({member.linkname!r})")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ArchiveRejected(f"entry {name!r} is a device, fifo or other special file")
    try:
        filtered = tarfile.data_filter(member, str(root))  # the stdlib's own checks, on top of ours
    except tarfile.FilterError as exc:
        raise ArchiveRejected(f"entry {name!r} refused: {exc}") from None
    _check_real_depth(name, root, limits)
    return filtered


def extract_tar_gz(archive: Path, dest: Path, limits: ExtractLimits = ExtractLimits()) -> int:
    """Extract ``archive`` into ``dest`` (created, must not exist). Returns the bytes read."""
    dest.mkdir(parents=True, exist_ok=False)
    root = dest.resolve()
    compressed = max(1, archive.stat().st_size)
    limit = min(limits.max_bytes, compressed * limits.max_ratio + 1024 * 1024)
    try:
        with gzip.open(archive, "rb") as inflated:
            reader = _CountingReader(inflated, limit)
            with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
                for members, member in enumerate(tar, start=1):
                    if members > limits.max_members:
                        raise ArchiveRejected(f"the archive has more than {limits.max_members} entries")
                    tar.extract(_check_member(member, root, limits), root, filter="fully_trusted")  # already filtered above
    except ArchiveRejected:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except RecursionError:  # a path the checks above let through, nested too deep for the stdlib
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRejected(
            f"the archive nests paths or chains symlinks too deeply; keep paths under {limits.max_depth} levels "
            "and let links point at real files or directories, not at other links"
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRejected(f"not a readable tar.gz archive ({type(exc).__name__}: {exc})") from None
    return reader.count
