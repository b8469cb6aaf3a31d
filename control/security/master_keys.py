"""Master keys for the secrets keyring: where they come from and how they are stored.

Format (the key file and ``MOORAGE_MASTER_KEYS`` alike): one key per line (``,`` also
separates keys in the environment variable), ``KEY_ID:BASE64`` where BASE64 is 32 random
bytes; blank lines and ``#`` comments are ignored. The FIRST key is the active one (new
values are sealed with it); the others only decrypt values not yet rotated.

Sources, first match wins: ``MOORAGE_MASTER_KEYS``; ``MOORAGE_MASTER_KEY_FILE``;
``<data_dir>/master.keys``. Only when neither variable is set and that default file does
not exist is a key generated there (mode 0600) — the zero-configuration dev path. An
explicitly configured file that is missing fails closed. Keys never live in the database.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from control.domain.names import MASTER_KEY_ID
from control.settings import Settings

KEY_BYTES = 32  # AES-256
DEFAULT_FILE_NAME = "master.keys"
_HEADER = "# moorage master keys: KEY_ID:BASE64(32 bytes), first line is the active key. Keep this file secret.\n"
log = structlog.get_logger("moorage.keys")


class MasterKeyError(Exception):
    """The master keys cannot be loaded or changed; the message says why (never the key)."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    id: str
    material: bytes = field(repr=False)  # repr=False: a stray log of the object never shows the key

    def __post_init__(self) -> None:
        if not MASTER_KEY_ID.accepts(self.id):
            raise MasterKeyError(f"Master key id {self.id!r} must match {MASTER_KEY_ID.pattern.pattern}: {MASTER_KEY_ID.rule}.")
        if len(self.material) != KEY_BYTES:
            raise MasterKeyError(f"Master key {self.id!r} must be {KEY_BYTES} bytes, got {len(self.material)}.")

    def line(self) -> str:
        return f"{self.id}:{base64.b64encode(self.material).decode()}"


def generate_master_key(key_id: str | None = None) -> MasterKey:
    # Date + randomness: ids sort by creation and never collide across rotations.
    key_id = key_id or f"mk-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
    return MasterKey(key_id, secrets.token_bytes(KEY_BYTES))


def parse_keys(text: str, *, origin: str) -> list[MasterKey]:
    keys: list[MasterKey] = []
    lines = [line.strip() for line in text.splitlines()]
    entries = [part.strip() for line in lines if not line.startswith("#") for part in line.split(",")]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        if not sep:
            raise MasterKeyError(f"{origin}: entry {number} is not KEY_ID:BASE64.")
        try:
            material = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{origin}: key {key_id.strip()!r} is not valid base64.") from None
        key = MasterKey(key_id.strip(), material)
        if any(k.id == key.id for k in keys):
            raise MasterKeyError(f"{origin}: key id {key.id!r} appears twice.")
        keys.append(key)
    if not keys:
        raise MasterKeyError(f"{origin} holds no master key.")
    return keys


def write_key_file(path: Path, keys: list[MasterKey]) -> None:
    """Replace ``path`` atomically (temp file + rename): a reader sees the old or the new
    file, never half of one — the running server reloads it while it serves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(_HEADER + "".join(k.line() + "\n" for k in keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where this process's master keys live: an environment value or a file."""

    env_value: str = field(default="", repr=False)
    file: Path | None = None
    may_generate: bool = False

    @classmethod
    def of(cls, settings: Settings) -> KeySource:
        if settings.master_keys.strip():
            return cls(env_value=settings.master_keys)
        if settings.master_key_file is not None:
            return cls(file=settings.master_key_file)
        return cls(file=settings.data_dir / DEFAULT_FILE_NAME, may_generate=True)

    @property
    def is_file(self) -> bool:
        return self.file is not None and not self.env_value

    def describe(self) -> str:
        return "MOORAGE_MASTER_KEYS" if self.env_value else str(self.file)

    def signature(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is replaced or rewritten (inode, size, mtime)."""
        if not self.is_file:
            return None
        try:
            stat = os.stat(self.file)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def load(self) -> list[MasterKey]:
        if self.env_value:
            return parse_keys(self.env_value, origin="MOORAGE_MASTER_KEYS")
        assert self.file is not None
        if not self.file.exists():
            if not self.may_generate:
                raise MasterKeyError(
                    f"Master key file {self.file} does not exist. Create one with "
                    "`moorage admin generate-master-key --output-file PATH`."
                )
            return [self._generate()]
        if self.file.stat().st_mode & 0o077:
            log.warning("master_key_file_permissions", path=str(self.file), hint="chmod 600")
        return parse_keys(self.file.read_text(), origin=str(self.file))

    def _generate(self) -> MasterKey:
        assert self.file is not None
        key = generate_master_key()
        temp = self.file.with_name(f".{self.file.name}.{secrets.token_hex(4)}.new")
        write_key_file(temp, [key])
        try:  # link() fails if the file exists: two processes starting at once keep one key
            os.link(temp, self.file)
        except FileExistsError:
            return parse_keys(self.file.read_text(), origin=str(self.file))[0]
        finally:
            temp.unlink(missing_ok=True)
        log.warning(
            "master_key_generated",
            path=str(self.file),
            key_id=key.id,
            note="Development default. Back this file up: without it stored secrets cannot be decrypted.",
        )
        return key
