"""A request body held for a second reading: in memory while small, then on disk.

The Idempotency-Key middleware must read a whole body before the handler does (to
fingerprint it), then hand the same bytes on. Source uploads are up to
``MOORAGE_MAX_UPLOAD_BYTES`` (100 MiB by default), so past ``memory_bytes`` the body goes
to an anonymous file under the data directory: it has no name (nothing is left behind by
a killed process) and the process's memory stays flat whatever the body's size. The data
directory, not ``/tmp``, because ``/tmp`` is often a tmpfs, which is memory again.

Disk writes and reads run in a worker thread, a piece of at most ``memory_bytes`` at a
time, so the event loop never waits on the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import anyio.to_thread

MEMORY_BYTES = 1024 * 1024  # held in memory before the body moves to disk; also the piece size


class SpooledBody:
    def __init__(self, directory: Path, *, memory_bytes: int = MEMORY_BYTES) -> None:
        self.directory = directory
        self.memory_bytes = memory_bytes
        self.size = 0
        self._pending = bytearray()  # not yet on disk (all of it while the body is small)
        self._file: IO[bytes] | None = None
        self._read_at = 0

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    async def append(self, chunk: bytes) -> None:
        self._pending += chunk
        self.size += len(chunk)
        if len(self._pending) >= self.memory_bytes:
            await self._flush()

    async def finish(self) -> None:
        """The body is complete: once any of it is on disk, all of it is."""
        if self._file is not None and self._pending:
            await self._flush()

    async def _flush(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        await anyio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 (closed by close())
        self._file.write(data)
        self._file.flush()  # read back with pread, past Python's buffer

    def pieces(self) -> Iterator[bytes]:
        """The whole body from its start, piece by piece (blocking: call it in a thread)."""
        if self._file is None:
            yield bytes(self._pending)
            return
        offset = 0
        while piece := os.pread(self._file.fileno(), self.memory_bytes, offset):
            offset += len(piece)
            yield piece

    async def read(self) -> tuple[bytes, bool]:
        """The next piece for the app and whether more follows; the first call after a small
        body returns all of it."""
        if self._file is None:
            self._read_at = self.size
            return bytes(self._pending), False
        file = self._file
        piece = await anyio.to_thread.run_sync(os.pread, file.fileno(), self.memory_bytes, self._read_at)
        self._read_at += len(piece)
        return piece, self._read_at < self.size

    def close(self) -> None:
        self._pending.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
