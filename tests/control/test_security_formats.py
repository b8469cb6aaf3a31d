"""Known answers for the formats that outlive a release: sealed secrets and bearer tokens.

Every stored secret and every issued key was written by some earlier version of this code,
so these formats can never change by accident. The vectors below were made once, by the
code as it was when they were committed, and are kept as literal bytes: a change to the
blob layout, the AAD's prefix or length encoding, the owner parts, the token pattern or
its hash makes them fail, where round-trip tests (seal then open with the same new code)
would still pass. A deliberate format change adds a new version and keeps these passing.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from control.domain.databases import password_aad
from control.domain.env import value_aad
from control.security import keyring as keyring_module
from control.security.keyring import (
    FORMAT_V1,
    DecryptionFailed,
    Keyring,
    KeyringError,
    MalformedBlob,
    UnknownMasterKey,
    key_id_of,
    owner_aad,
)
from control.security.master_keys import MasterKey, parse_keys
from control.security.node_tokens import NODE_TOKEN, parse_node_id
from control.security.tokens import (
    API_KEY,
    PREFIX,
    RECOVERY_CODE_PREFIX,
    REGISTRATION_TOKEN,
    TokenKind,
    hash_token,
    issue_recovery_code,
    issue_token,
    parse_key_id,
    token_matches,
)

# -- sealed secrets: AES-256-GCM, blob 0x01 | len(key id) | key id | nonce | ciphertext+tag ---

# Two master keys as a key file writes them; their bytes are 00..1f and ff..e0.
KEY_FILE = """
kat-2024-a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
mk-20240101-0badf00d://79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA=
"""
KEY_A, KEY_B = parse_keys(KEY_FILE, origin="vectors")
TENANT, APP, DATABASE = "ten_01hzkat0000000000000000a", "app_01hzkat0000000000000000b", "db_01hzkat0000000000000000c"

# The owner AADs as the code of the day built them: "moorage-secret/v1", then each part
# as a 4-byte big-endian length and its UTF-8 bytes.
ENV_VALUE_AAD = bytes.fromhex(
    "6d6f6f726167652d7365637265742f7631"
    "0000001c74656e5f3031687a6b61743030303030303030303030303030303061"
    "0000001c6170705f3031687a6b61743030303030303030303030303030303062"
    "0000000c44415441424153455f55524c"
)
PASSWORD_AAD = bytes.fromhex(
    "6d6f6f726167652d7365637265742f7631"
    "000000086461746162617365"
    "0000001c74656e5f3031687a6b61743030303030303030303030303030303061"
    "0000001b64625f3031687a6b61743030303030303030303030303030303063"
    "0000000870617373776f7264"
)

# Blobs sealed by the code of the day the vectors were committed (random nonces).
ENV_VALUE_BLOB = bytes.fromhex(
    "010a6b61742d323032342d614ef9f57615bd177d3ce29b0866c7893c59a815d590a6fba7a1eb40ba235e88d2b231"
    "f95e9736c19b31daca250335d11485237f05acb7dc307123b1ce80"
)
SEALED_VECTORS = [
    pytest.param(
        KEY_A,
        ENV_VALUE_AAD,
        "postgres://app:s3cret@db:5432/app",
        ENV_VALUE_BLOB.hex(),
        id="env-value",
    ),
    pytest.param(
        KEY_A,
        PASSWORD_AAD,
        "pw-\u00e9\u00e8-\U0001f511",
        "010a6b61742d323032342d6152a5cb5df5194a75021a94b688ed80b026ad6a8b4ace5283998e93d3bd78066ecffd84c048b572f8",
        id="database-password-unicode",
    ),
    pytest.param(
        KEY_B,
        owner_aad(TENANT, APP, "EMPTY"),
        "",
        "01146d6b2d32303234303130312d3062616466303064bda420698428e96e0505d90232de542b6dc5a91643e058a5d933231b",
        id="empty-value-second-key",
    ),
]


def test_the_owner_aad_encoding_is_pinned() -> None:
    assert owner_aad("ab", "c") == b"moorage-secret/v1\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    assert owner_aad() == b"moorage-secret/v1"
    assert owner_aad("\u00e9") == b"moorage-secret/v1\x00\x00\x00\x02\xc3\xa9"  # the length counts UTF-8 bytes
    assert value_aad(TENANT, APP, "DATABASE_URL") == ENV_VALUE_AAD
    assert password_aad(TENANT, DATABASE) == PASSWORD_AAD


@pytest.mark.parametrize(("key", "aad", "plaintext", "blob_hex"), SEALED_VECTORS)
def test_blobs_sealed_by_earlier_code_still_open(key: MasterKey, aad: bytes, plaintext: str, blob_hex: str) -> None:
    blob = bytes.fromhex(blob_hex)
    assert key_id_of(blob) == key.id
    assert Keyring([key]).open(blob, aad) == plaintext
    # After a rotation the old key only opens; the blob still names it.
    assert Keyring([MasterKey("kat-new", bytes(32)), KEY_A, KEY_B]).open(blob, aad) == plaintext


@pytest.mark.parametrize(("key", "aad", "plaintext", "blob_hex"), SEALED_VECTORS)
def test_sealing_writes_the_same_bytes_given_the_same_nonce(
    key: MasterKey, aad: bytes, plaintext: str, blob_hex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = bytes.fromhex(blob_hex)
    header_length = 2 + len(key.id)
    nonce = blob[header_length : header_length + 12]
    monkeypatch.setattr(keyring_module.os, "urandom", lambda n: nonce if n == 12 else pytest.fail(f"urandom({n})"))
    sealed = Keyring([key, KEY_A if key is KEY_B else KEY_B]).seal(plaintext, aad)
    assert sealed.blob == blob and sealed.key_id == key.id
    assert blob[:header_length] == bytes([FORMAT_V1, len(key.id)]) + key.id.encode()
    assert len(blob) == header_length + 12 + len(plaintext.encode()) + 16


def test_a_vector_under_another_owner_or_key_does_not_open() -> None:
    blob = ENV_VALUE_BLOB
    with pytest.raises(DecryptionFailed) as failure:
        Keyring([KEY_A]).open(blob, PASSWORD_AAD)
    assert failure.value.reason == "authentication-failed"
    assert str(failure.value) == (
        "Sealed value failed authentication under key 'kat-2024-a': altered, or moved from another owner."
    )
    with pytest.raises(DecryptionFailed):
        Keyring([MasterKey(KEY_A.id, KEY_B.material)]).open(blob, ENV_VALUE_AAD)


# -- malformed blobs: each reaches key_id_of and gets its documented error -----------------

GOOD = ENV_VALUE_BLOB
SHORTEST = bytes([FORMAT_V1, 1]) + b"k" + bytes(12 + 16)  # a one-letter key id, a nonce and a bare tag


VERSION = "Sealed value has an unknown format version."
TRUNCATED = "Sealed value is truncated."
CORRUPT_ID = "Sealed value has a corrupt key id."


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        pytest.param(b"", VERSION, id="empty"),
        pytest.param(b"\x01", VERSION, id="version-only"),
        pytest.param(b"\x00" + GOOD[1:], VERSION, id="version-0"),
        pytest.param(b"\x02" + GOOD[1:], VERSION, id="version-2"),
        pytest.param(b"\x02\x00", VERSION, id="two-bytes-version-2"),
        pytest.param(b"\x01\x05", TRUNCATED, id="two-bytes"),
        pytest.param(b"\x01\x00" + bytes(40), TRUNCATED, id="empty-key-id"),
        pytest.param(GOOD[:12], TRUNCATED, id="cut-in-the-nonce"),
        pytest.param(SHORTEST[:-1], TRUNCATED, id="one-byte-short-of-a-tag"),
        pytest.param(b"\x01\xff" + b"k" * 200, TRUNCATED, id="key-id-longer-than-blob"),
        pytest.param(b"\x01\x02\xc3\xa9" + bytes(28), CORRUPT_ID, id="non-ascii-key-id"),
        pytest.param(b"\x01\x01\xff" + bytes(28), CORRUPT_ID, id="invalid-byte-key-id"),
    ],
)
def test_malformed_blobs_are_refused_by_key_id_of_and_open(blob: bytes, message: str) -> None:
    with pytest.raises(MalformedBlob) as failure:
        key_id_of(blob)
    assert str(failure.value) == message and failure.value.reason == "malformed"
    with pytest.raises(MalformedBlob) as failure:
        Keyring([KEY_A]).open(blob, ENV_VALUE_AAD)
    assert str(failure.value) == message


def test_the_shortest_well_formed_blob_has_an_id_and_fails_only_authentication() -> None:
    assert key_id_of(SHORTEST) == "k"
    with pytest.raises(DecryptionFailed):
        Keyring([MasterKey("k", bytes(32))]).open(SHORTEST, b"")
    assert key_id_of(GOOD[:-1]) == KEY_A.id  # one byte of ciphertext gone: still parses, then fails the tag
    with pytest.raises(DecryptionFailed):
        Keyring([KEY_A]).open(GOOD[:-1], ENV_VALUE_AAD)


def test_a_key_id_that_is_not_loaded_is_named_and_nothing_else() -> None:
    with pytest.raises(UnknownMasterKey) as failure:
        Keyring([KEY_B]).open(GOOD, ENV_VALUE_AAD)
    assert failure.value.key_id == "kat-2024-a" and failure.value.reason == "unknown-key"
    assert str(failure.value) == "Master key 'kat-2024-a' is not loaded."
    assert isinstance(failure.value, KeyringError) and KeyringError.reason == "undecryptable"


def test_plaintext_that_is_not_utf8_fails_authentication_not_with_a_decode_error() -> None:
    nonce = bytes(12)
    header = bytes([FORMAT_V1, len(KEY_A.id)]) + KEY_A.id.encode()
    sealed = keyring_module.AESGCM(KEY_A.material).encrypt(nonce, b"\xff\xfe", header + ENV_VALUE_AAD)
    with pytest.raises(DecryptionFailed):
        Keyring([KEY_A]).open(header + nonce + sealed, ENV_VALUE_AAD)


# -- bearer tokens: <prefix><id>_<secret>, stored as SHA-256 hex of the whole token -------------

SECRET = "Kn0wn-answer_vector-f0r-the-token-format-A1"  # 43 URL-safe characters, as token_urlsafe(32) makes
API_KEY_ID = "key_01hzkat0vect0r000000000000"
API_KEY_TOKEN = f"mrg_live_{API_KEY_ID}_{SECRET}"
API_KEY_HASH = "eaa39e46e7c575b6c84f1e70ba2c05bde4b3a806843062331b7ff372bfd7a10a"
NODE_ID = "node_01hzkat0vect0r000000000001"
NODE_TOKEN_STRING = f"mrg_node_{NODE_ID}_{SECRET}"
NODE_TOKEN_HASH = "246f0fa68a0e4cba37d35f9c477b701535b135d9484920030591310354e930a8"


def test_an_api_key_issued_earlier_still_parses_and_verifies() -> None:
    assert PREFIX == API_KEY.prefix == "mrg_live_" and API_KEY.id_prefix == "key"
    assert parse_key_id(API_KEY_TOKEN) == API_KEY_ID
    assert hash_token(API_KEY_TOKEN) == API_KEY_HASH
    assert token_matches(API_KEY_TOKEN, API_KEY_HASH)
    assert not token_matches(API_KEY_TOKEN[:-1] + "2", API_KEY_HASH)
    assert not token_matches(API_KEY_TOKEN, API_KEY_HASH.upper())


def test_a_node_token_issued_earlier_still_parses_and_verifies() -> None:
    assert NODE_TOKEN.prefix == "mrg_node_" and NODE_TOKEN.id_prefix == "node"
    assert parse_node_id(NODE_TOKEN_STRING) == NODE_ID
    assert hash_token(NODE_TOKEN_STRING) == NODE_TOKEN_HASH
    assert token_matches(NODE_TOKEN_STRING, NODE_TOKEN_HASH)


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        (API_KEY, r"mrg_live_(key_[0-9a-z]{26})_[A-Za-z0-9_-]{43}"),
        (NODE_TOKEN, r"mrg_node_(node_[0-9a-z]{26})_[A-Za-z0-9_-]{43}"),
        (REGISTRATION_TOKEN, r"mrg_reg_(rtk_[0-9a-z]{26})_[A-Za-z0-9_-]{43}"),
    ],
)
def test_issued_tokens_have_the_documented_shape_and_hash(kind: TokenKind, pattern: str) -> None:
    issued = kind.issue()
    match = re.fullmatch(pattern, issued.token)
    assert match is not None and match.group(1) == issued.id
    assert issued.secret_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert kind.parse_id(issued.token) == issued.id
    assert kind.issue().token != issued.token
    assert issue_token().id.startswith("key_")


def _vary(token: str, old: str, new: str) -> str:
    assert old in token
    return token.replace(old, new, 1)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param(NODE_TOKEN_STRING, id="a-node-token"),
        pytest.param(_vary(API_KEY_TOKEN, "mrg_live_", "mrg_test_"), id="other-prefix"),
        pytest.param(_vary(API_KEY_TOKEN, "mrg_live_", "mrgXlive_"), id="prefix-is-literal"),
        pytest.param(_vary(API_KEY_TOKEN, "mrg_live_", ""), id="no-prefix"),
        pytest.param(_vary(API_KEY_TOKEN, "key_", "app_"), id="other-id-type"),
        pytest.param(_vary(API_KEY_TOKEN, "key_", "keyX"), id="id-separator"),
        pytest.param(_vary(API_KEY_TOKEN, "000000000000_", "00000000000_"), id="id-25-chars"),
        pytest.param(_vary(API_KEY_TOKEN, "000000000000_", "0000000000000_"), id="id-27-chars"),
        pytest.param(_vary(API_KEY_TOKEN, "01hzkat", "01HZKAT"), id="id-upper-case"),
        pytest.param(_vary(API_KEY_TOKEN, "000000000000_K", "000000000000-K"), id="secret-separator"),
        pytest.param(API_KEY_TOKEN[:-1], id="secret-42-chars"),
        pytest.param(API_KEY_TOKEN + "x", id="secret-44-chars"),
        pytest.param(API_KEY_TOKEN[:-1] + "=", id="secret-padding"),
        pytest.param(API_KEY_TOKEN[:-1] + "+", id="secret-not-url-safe"),
        pytest.param(API_KEY_TOKEN + "\n", id="trailing-newline"),
        pytest.param(" " + API_KEY_TOKEN, id="leading-space"),
    ],
)
def test_anything_but_a_well_formed_api_key_parses_to_none(token: str) -> None:
    assert parse_key_id(token) is None


def test_a_recovery_code_has_the_documented_shape_and_hash() -> None:
    code, code_hash = issue_recovery_code()
    assert RECOVERY_CODE_PREFIX == "mrg_rec_"
    assert re.fullmatch(r"mrg_rec_[A-Za-z0-9_-]{43}", code) is not None
    assert code_hash == hashlib.sha256(code.encode()).hexdigest() and token_matches(code, code_hash)
    assert issue_recovery_code()[0] != code


def test_each_kind_parses_only_its_own_tokens() -> None:
    assert parse_node_id(API_KEY_TOKEN) is None and parse_key_id(NODE_TOKEN_STRING) is None
    registration = REGISTRATION_TOKEN.issue().token
    assert parse_key_id(registration) is None and parse_node_id(registration) is None
    assert REGISTRATION_TOKEN.parse_id(API_KEY_TOKEN) is None
    other = TokenKind("mrg_x.y_", "key")  # the prefix is matched literally, not as a pattern
    assert other.parse_id(f"mrg_x.y_{API_KEY_ID}_{SECRET}") == API_KEY_ID
    assert other.parse_id(f"mrg_xzy_{API_KEY_ID}_{SECRET}") is None
    assert "_pattern" not in repr(other)
