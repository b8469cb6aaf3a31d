"""The AES-256-GCM keyring and its master keys: round trips, and every way to fail closed."""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from litestar.testing import TestClient

from control.app import StartupRefused, create_app
from control.logging import attach_stream
from control.security.keyring import (
    DecryptionFailed,
    Keyring,
    KeyringError,
    MalformedBlob,
    ReloadingKeyring,
    UnknownMasterKey,
    owner_aad,
)
from control.security.master_keys import (
    KeySource,
    MasterKey,
    MasterKeyError,
    generate_master_key,
    parse_keys,
    write_key_file,
)
from control.settings import Settings

KEY_A = generate_master_key("key-a")
KEY_B = generate_master_key("key-b")
AAD = owner_aad("ten_1", "app_1", "DATABASE_URL")


def test_round_trip_binds_the_key_id_and_uses_fresh_nonces() -> None:
    keyring = Keyring([KEY_A, KEY_B])
    first, second = keyring.seal("s3cret", AAD), keyring.seal("s3cret", AAD)
    assert first.key_id == "key-a" and first.blob[2 : 2 + 5] == b"key-a"
    assert first.blob != second.blob  # random 96-bit nonce per value
    assert b"s3cret" not in first.blob
    assert keyring.open(first.blob, AAD) == "s3cret"


def test_older_keys_still_open_what_they_sealed() -> None:
    old = Keyring([KEY_B]).seal("from before", AAD)
    assert Keyring([KEY_A, KEY_B]).open(old.blob, AAD) == "from before"


@pytest.mark.parametrize(
    "other_owner",
    [("ten_2", "app_1", "DATABASE_URL"), ("ten_1", "app_2", "DATABASE_URL"), ("ten_1", "app_1", "OTHER")],
)
def test_a_value_moved_to_another_owner_does_not_open(other_owner: tuple[str, str, str]) -> None:
    keyring = Keyring([KEY_A])
    sealed = keyring.seal("s3cret", AAD)
    with pytest.raises(DecryptionFailed) as failure:
        keyring.open(sealed.blob, owner_aad(*other_owner))
    assert "s3cret" not in str(failure.value) and failure.value.reason == "authentication-failed"


def test_aad_parts_cannot_be_shifted() -> None:
    assert owner_aad("ab", "c", "D") != owner_aad("a", "bc", "D")


def test_unknown_key_id_fails_closed() -> None:
    sealed = Keyring([KEY_B]).seal("s3cret", AAD)
    with pytest.raises(UnknownMasterKey) as failure:
        Keyring([KEY_A]).open(sealed.blob, AAD)
    assert failure.value.key_id == "key-b"


def test_same_id_different_key_fails_closed() -> None:
    sealed = Keyring([KEY_A]).seal("s3cret", AAD)
    impostor = MasterKey("key-a", os.urandom(32))
    with pytest.raises(DecryptionFailed):
        Keyring([impostor]).open(sealed.blob, AAD)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x02\x05key-a" + b"\0" * 40, b"\x01\x05key-a" + b"\0" * 10, b"\x01\x00", b"\x01\x01\xff" + b"\0" * 28],
)
def test_malformed_blobs_fail_closed(blob: bytes) -> None:
    with pytest.raises(MalformedBlob):
        Keyring([KEY_A]).open(blob, AAD)


@hsettings(max_examples=150, deadline=None)
@given(value=st.text(), name=st.text(min_size=1), tenant=st.text(max_size=40), app=st.text(max_size=40))
def test_round_trip_for_any_unicode(value: str, name: str, tenant: str, app: str) -> None:
    keyring = Keyring([KEY_A, KEY_B])
    aad = owner_aad(tenant, app, name)
    assert keyring.open(keyring.seal(value, aad).blob, aad) == value


@hsettings(max_examples=300, deadline=None)
@given(value=st.text(max_size=64), position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_fails(value: str, position: int, flip: int) -> None:
    keyring = Keyring([KEY_A])
    blob = bytearray(keyring.seal(value, AAD).blob)
    blob[position % len(blob)] ^= flip
    with pytest.raises(KeyringError):
        keyring.open(bytes(blob), AAD)


# -- master keys -------------------------------------------------------------------------


def test_key_file_format_first_key_is_active(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_key_file(path, [KEY_A, KEY_B])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = parse_keys(path.read_text(), origin="test")
    assert [k.id for k in keys] == ["key-a", "key-b"] and keys[0].material == KEY_A.material
    env_style = f"{KEY_B.line()}, {KEY_A.line()},\n\n"
    assert Keyring(parse_keys(env_style, origin="env")).active_id == "key-b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no master key"),
        ("# only a comment\n", "no master key"),
        ("key-a", "KEY_ID:BASE64"),
        ("key-a:!!notbase64!!", "not valid base64"),
        (f"key-a:{base64.b64encode(b'short').decode()}", "32 bytes"),
        (f"bad id:{base64.b64encode(os.urandom(32)).decode()}", "must match"),
        (f"{KEY_A.line()}\n{KEY_A.line()}", "twice"),
    ],
)
def test_bad_key_files_are_refused_without_showing_key_material(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=message) as failure:
        parse_keys(text, origin="test")
    assert KEY_A.line().split(":")[1] not in str(failure.value)


def test_master_key_repr_hides_the_material() -> None:
    assert base64.b64encode(KEY_A.material).decode() not in repr(KEY_A)
    assert repr(KEY_A.material) not in repr(KEY_A)
    assert "secretkeys" not in repr(Settings(master_keys="secretkeys"))


def test_sources_env_wins_then_file_then_generated_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert KeySource.of(Settings(data_dir=data, master_keys=KEY_A.line())).load()[0].id == "key-a"
    explicit = KeySource.of(Settings(data_dir=data, master_key_file=tmp_path / "missing.keys"))
    with pytest.raises(MasterKeyError, match="does not exist"):
        explicit.load()
    default = KeySource.of(Settings(data_dir=data))
    generated = default.load()[0]
    assert default.file == data / "master.keys"
    assert stat.S_IMODE(default.file.stat().st_mode) == 0o600
    assert default.load()[0] == generated  # generated once, then read back


def test_first_start_generates_and_logs_a_key_without_showing_it(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    captured = io.StringIO()
    handler = attach_stream(captured)
    try:
        with TestClient(app):
            pass
    finally:
        logging.getLogger().removeHandler(handler)
    key = parse_keys((tmp_path / "data" / "master.keys").read_text(), origin="test")[0]
    assert key.id.startswith("mk-")
    logs = captured.getvalue()
    assert "master_key_generated" in logs and key.id in logs
    assert base64.b64encode(key.material).decode() not in logs


def test_server_refuses_to_start_with_a_missing_explicit_key_file(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", master_key_file=tmp_path / "absent.keys"))
    with pytest.raises(BaseException) as failure, TestClient(app):  # lifespan hooks may wrap it in an ExceptionGroup
        pass
    refusals = [failure.value]
    while isinstance(refusals[0], BaseExceptionGroup):
        refusals = list(refusals[0].exceptions)
    assert isinstance(refusals[0], StartupRefused) and "absent.keys" in str(refusals[0])


def test_reloading_keyring_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_key_file(path, [KEY_A])
    keyring = ReloadingKeyring(KeySource(file=path))
    old = keyring.seal("v", AAD)
    assert old.key_id == "key-a"
    write_key_file(path, [KEY_B, KEY_A])
    assert keyring.seal("v", AAD).key_id == "key-b"  # a rotation needs no restart
    assert keyring.open(old.blob, AAD) == "v"
    path.write_text("garbage")  # an operator mid-edit: keep the last good keyring
    assert keyring.current().active_id == "key-b"


def test_unknown_key_id_forces_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_key_file(path, [KEY_A])
    keyring = ReloadingKeyring(KeySource(file=path))
    keyring.current()
    sealed = Keyring([KEY_B]).seal("v", AAD)
    # Rewritten in place with the same size and mtime: the file looks unchanged, so
    # only the retry on an unknown key id can find key-b.
    before = os.stat(path)
    path.write_text(path.read_text().replace(KEY_A.line(), KEY_B.line()))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert keyring.source.signature() == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert keyring.open(sealed.blob, AAD) == "v"
    with pytest.raises(UnknownMasterKey):
        keyring.open(Keyring([generate_master_key("key-c")]).seal("v", AAD).blob, AAD)
