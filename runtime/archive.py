"""Safe extraction of an uploaded source archive (tar.gz) into a build directory.

Everything an archive could use to escape or exhaust the host is refused before a byte of
it is written: absolute names and ``..`` (via ``tarfile.data_filter``, which also refuses
links pointing outside the tree, device files and set-uid bits), any symlink or hardlink
whose target leaves the tree, more than ``max_members`` entries, and a decompression bomb
(the *decompressed* stream is counted as it is read, so a tiny archive that inflates to
gigabytes stops at ``max_bytes``). On refusal the partial tree is removed.
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
from typing import IO


class ArchiveRejected(ValueError):
    """The archive is unsafe or malformed; the message says which entry and why."""


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int = 500 * 1024 * 1024  # decompressed tar stream
    max_members: int = 20_000
    max_ratio: int = 200  # decompressed size / compressed size, beyond which it is a bomb


class _CountingReader(io.RawIOBase):
    """Reads the decompressed stream and stops it past ``limit`` bytes."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveRejected(f"the archive expands to more than {self.limit} bytes (a decompression bomb or too large a source)")
        buffer[: len(data)] = data
        return len(data)


def _inside(root: Path, target: str) -> bool:
    resolved = os.path.normpath(os.path.join(root, target))
    return resolved == str(root) or resolved.startswith(str(root) + os.sep)


def _check_member(member: tarfile.TarInfo, root: Path) -> tarfile.TarInfo:
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise ArchiveRejected(f"entry {name!r} has an absolute path")
    if ".." in Path(name).parts:
        raise ArchiveRejected(f"entry {name!r} climbs out of the tree with '..'")
    if member.issym():
        # Relative to the link's own directory; absolute targets always leave the tree.
        if os.path.isabs(member.linkname) or not _inside(root, os.path.join(os.path.dirname(name), member.linkname)):
            raise ArchiveRejected(f"symlink {name!r} points outside the source tree ({member.linkname!r})")
    if member.islnk() and (os.path.isabs(member.linkname) or not _inside(root, member.linkname)):
        raise ArchiveRejected(f"hardlink {name!r} points outside the source tree ({member.linkname!r})")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ArchiveRejected(f"entry {name!r} is a device, fifo or other special file")
    try:
        filtered = tarfile.data_filter(member, str(root))  # the stdlib's own checks, on top of ours
    except tarfile.FilterError as exc:
        raise ArchiveRejected(f"entry {name!r} refused: {exc}") from None
    return filtered


def extract_tar_gz(archive: Path, dest: Path, limits: ExtractLimits = ExtractLimits()) -> int:
    """Extract ``archive`` into ``dest`` (created, must not exist). Returns the bytes read."""
    dest.mkdir(parents=True, exist_ok=False)
    root = dest.resolve()
    compressed = max(1, archive.stat().st_size)
    limit = min(limits.max_bytes, compressed * limits.max_ratio + 1024 * 1024)
    try:
        with gzip.open(archive, "rb") as inflated:
            counted = io.BufferedReader(_CountingReader(inflated, limit))  # type: ignore[arg-type]
            with tarfile.open(fileobj=counted, mode="r|") as tar:
                members = 0
                for member in tar:
                    members += 1
                    if members > limits.max_members:
                        raise ArchiveRejected(f"the archive has more than {limits.max_members} entries")
                    tar.extract(_check_member(member, root), root, filter="fully_trusted")  # already filtered above
    except ArchiveRejected:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRejected(f"not a readable tar.gz archive ({type(exc).__name__}: {exc})") from None
    return counted.raw.count  # type: ignore[attr-defined]
