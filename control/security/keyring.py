"""AES-256-GCM sealing of stored secrets, under rotating master keys.

Sealed blob: ``0x01 | len(key_id) | key_id (ASCII) | nonce (12) | ciphertext+tag``.
The key id inside each blob says which master key opens it (the ``master_key_id``
column repeats it so rotation can find rows by SQL). The AAD binds the blob's header
and its owner (tenant id, app id, variable name): a blob copied into another row, or
with any byte changed, fails to open. Nonces are 96 random bits per seal; with at most
millions of values per key that stays far below GCM's 2^32 random-nonce bound.

Failures never say more than which key and why; never any plaintext.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from control.security.master_keys import KeySource, MasterKey, MasterKeyError

FORMAT_V1 = 1
NONCE_BYTES = 12
TAG_BYTES = 16
log = structlog.get_logger("moorage.keyring")


class KeyringError(Exception):
    """A sealed value cannot be opened. ``reason`` is a stable slug."""

    reason = "undecryptable"


class MalformedBlob(KeyringError):
    reason = "malformed"


class UnknownMasterKey(KeyringError):
    reason = "unknown-key"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"Master key {key_id!r} is not loaded.")
        self.key_id = key_id


class DecryptionFailed(KeyringError):
    reason = "authentication-failed"


@dataclass(frozen=True, slots=True)
class Sealed:
    blob: bytes
    key_id: str


def owner_aad(*parts: str) -> bytes:
    """Length-prefixed, so ("ab", "c") and ("a", "bc") never collide."""
    encoded = [p.encode() for p in parts]
    return b"moorage-secret/v1" + b"".join(struct.pack(">I", len(e)) + e for e in encoded)


def key_id_of(blob: bytes) -> str:
    if len(blob) < 2 or blob[0] != FORMAT_V1:
        raise MalformedBlob("Sealed value has an unknown format version.")
    end = 2 + blob[1]
    if blob[1] == 0 or len(blob) < end + NONCE_BYTES + TAG_BYTES:
        raise MalformedBlob("Sealed value is truncated.")
    try:
        return blob[2:end].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedBlob("Sealed value has a corrupt key id.") from None


class Keyring:
    """An immutable set of master keys; the first seals, all of them open."""

    def __init__(self, keys: Sequence[MasterKey]) -> None:
        if not keys:
            raise MasterKeyError("A keyring needs at least one master key.")
        self.active_id = keys[0].id
        self._ciphers = {k.id: AESGCM(k.material) for k in keys}
        self.key_ids = tuple(k.id for k in keys)

    def seal(self, plaintext: str, aad: bytes) -> Sealed:
        key_id = self.active_id.encode("ascii")
        header = bytes([FORMAT_V1, len(key_id)]) + key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.active_id].encrypt(nonce, plaintext.encode(), header + aad)
        return Sealed(header + nonce + sealed, self.active_id)

    def open(self, blob: bytes, aad: bytes) -> str:
        key_id = key_id_of(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownMasterKey(key_id)
        split = 2 + len(key_id)
        header, nonce, sealed = blob[:split], blob[split : split + NONCE_BYTES], blob[split + NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, sealed, header + aad).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise DecryptionFailed(
                f"Sealed value failed authentication under key {key_id!r}: altered, or moved from another owner."
            ) from None


class ReloadingKeyring:
    """The process-wide keyring: reloads when the key file changes, and once more when
    a value names a key it does not hold — so ``moorage admin rotate-key`` needs no restart.

    A key file that turns unreadable keeps the last good keyring (logged): refusing
    every secret because an operator is mid-edit would be worse than using known keys.
    """

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._keyring: Keyring | None = None
        self._signature: tuple[int, int, int] | None = None

    def current(self) -> Keyring:
        keyring = self._keyring
        if keyring is not None and self.source.signature() == self._signature:
            return keyring
        return self.reload()

    def reload(self) -> Keyring:
        with self._lock:
            signature = self.source.signature()
            if self._keyring is not None and signature == self._signature:
                return self._keyring
            try:
                keyring = Keyring(self.source.load())
            except (MasterKeyError, OSError) as exc:
                if self._keyring is None:
                    raise MasterKeyError(str(exc)) from None
                log.error("master_keys_reload_failed", source=self.source.describe(), error=str(exc))
                return self._keyring
            if self._keyring is None or keyring.key_ids != self._keyring.key_ids:
                log.info(
                    "master_keys_loaded", source=self.source.describe(), active=keyring.active_id, keys=list(keyring.key_ids)
                )
            # The signature from BEFORE loading: a change racing the load triggers another.
            self._keyring, self._signature = keyring, signature
            return keyring

    def seal(self, plaintext: str, aad: bytes) -> Sealed:
        return self.current().seal(plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> str:
        try:
            return self.current().open(blob, aad)
        except UnknownMasterKey:
            self._signature = None  # force a re-read: a rotation may have just added the key
            return self.reload().open(blob, aad)
