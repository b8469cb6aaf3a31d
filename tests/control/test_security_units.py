"""control/security piece by piece, without the app: scopes and principals, master-key
parsing and sources, and what the failed-auth throttle says."""

from __future__ import annotations

import base64
import os
import stat
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from control.domain.errors import Throttled
from control.security import master_keys
from control.security.auth_throttle import AuthThrottle, client_bucket
from control.security.keyring import Keyring, ReloadingKeyring, owner_aad
from control.security.master_keys import (
    DEFAULT_FILE_NAME,
    KeySource,
    MasterKey,
    MasterKeyError,
    generate_master_key,
    parse_keys,
    write_key_file,
)
from control.security.principal import Principal
from control.security.rate_limit import Decision, Policy, SlidingWindowLimiter
from control.security.scopes import DESCRIPTIONS, KEY_LIMITS, TENANT_SCOPES, KeyScope, describe, effective
from control.settings import Settings

# -- scopes and principals ---------------------------------------------------------------------


def test_each_scope_grants_exactly_what_it_includes() -> None:
    assert effective(["admin"]) == {"admin", "deploy", "read"}
    assert effective(("deploy",)) == {"deploy", "read"}
    assert effective(["read"]) == {"read"}
    assert effective(["inference"]) == {"inference"}
    assert effective(["operator"]) == {"operator"}
    assert effective(["read", "inference"]) == {"read", "inference"}
    assert effective([]) == frozenset()
    assert effective(["no-such-scope", "read"]) == {"read"}  # an unknown scope (a later version's) grants nothing
    assert {"read", "deploy", "admin", "inference"} == TENANT_SCOPES


def test_the_scope_description_lists_every_scope_in_order() -> None:
    text = describe()
    assert text.startswith("Scopes (`admin` includes `deploy`, which includes `read`):\n- `read`: ")
    lines = text.split("\n\n")[0].split("\n")[1:]
    assert lines == [f"- `{scope}`: {DESCRIPTIONS[scope]}" for scope in ("read", "deploy", "admin", "inference", "operator")]
    assert text.endswith("\n\n" + KEY_LIMITS)


def test_a_principal_holds_its_effective_scopes_and_only_an_operator_key_is_operator() -> None:
    admin = Principal.of("key_1", "ten_1", ("admin",))
    assert admin.allows("read") and admin.allows("deploy") and not admin.allows("operator")
    assert not admin.is_operator and admin.key_id == "key_1" and admin.tenant_id == "ten_1"
    operator = Principal.of("key_2", None, (KeyScope.OPERATOR,))
    assert operator.is_operator and operator.allows("operator")
    assert not Principal.of("key_3", "ten_1", ("operator",)).is_operator  # a tenant key never is
    assert not Principal.of("key_4", None, ("admin",)).is_operator


# -- master keys -------------------------------------------------------------------------------

KEY_LINE = f"key-a:{base64.b64encode(bytes(range(32))).decode()}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key-a", "test: entry 1 is not KEY_ID:BASE64."),
        (f"{KEY_LINE},\n,oops", "test: entry 4 is not KEY_ID:BASE64."),  # blank entries count too
        (f"{KEY_LINE}\n# comment\noops", "test: entry 2 is not KEY_ID:BASE64."),  # comments do not count
        ("key-b:AAEC:AwQ=", "test: key 'key-b' is not valid base64."),  # the id ends at the first colon
        (
            f"key-c:{base64.b64encode(bytes(32)).decode()[:-4]}!!{base64.b64encode(bytes(32)).decode()[-4:]}",
            "test: key 'key-c' is not valid base64.",
        ),
        ("  ", "test holds no master key."),
    ],
)
def test_key_file_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError) as failure:
        parse_keys(text, origin="test")
    assert str(failure.value) == message


def test_blank_entries_and_spaces_anywhere_are_skipped() -> None:
    other = generate_master_key("key-b")
    keys = parse_keys(
        f"  {KEY_LINE} ,, \n\n   # a comment\n {other.id} : {base64.b64encode(other.material).decode()} \n", origin="t"
    )
    assert [(k.id, k.material) for k in keys] == [("key-a", bytes(range(32))), ("key-b", other.material)]


def test_master_key_errors_say_what_is_wrong() -> None:
    with pytest.raises(MasterKeyError) as failure:
        MasterKey("key-a", bytes(31))
    assert str(failure.value) == "Master key 'key-a' must be 32 bytes, got 31."
    with pytest.raises(MasterKeyError) as failure:
        MasterKey("-bad", bytes(32))
    assert str(failure.value).startswith("Master key id '-bad' must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}: 1 to 64")
    assert MasterKey("k", bytes(32)).line() == "k:" + base64.b64encode(bytes(32)).decode()


def test_generated_keys_are_dated_random_and_32_bytes() -> None:
    first, second = generate_master_key(), generate_master_key()
    assert first.id.startswith("mk-") and len(first.id) == len("mk-20240101-") + 8
    assert first.id != second.id and first.material != second.material and len(first.material) == 32
    assert generate_master_key("given").id == "given"


def test_key_sources_describe_themselves_and_only_files_have_signatures(tmp_path: Path) -> None:
    env = KeySource.of(Settings(data_dir=tmp_path, master_keys=f"  {KEY_LINE}  "))
    assert env.describe() == "MOORAGE_MASTER_KEYS" and not env.is_file and env.signature() is None
    assert KeySource.of(Settings(data_dir=tmp_path, master_keys="   ")).file == tmp_path / DEFAULT_FILE_NAME
    explicit = KeySource.of(Settings(data_dir=tmp_path, master_key_file=tmp_path / "k.keys"))
    assert explicit.describe() == str(tmp_path / "k.keys") and explicit.is_file and not explicit.may_generate
    assert explicit.signature() is None  # missing
    write_key_file(tmp_path / "k.keys", [parse_keys(KEY_LINE, origin="t")[0]])
    before = explicit.signature()
    assert before is not None and before[0] == os.stat(tmp_path / "k.keys").st_ino
    write_key_file(tmp_path / "k.keys", [parse_keys(KEY_LINE, origin="t")[0], generate_master_key("key-b")])
    assert explicit.signature() != before
    assert KeySource.of(Settings(data_dir=tmp_path)).may_generate


def test_a_key_file_readable_by_others_is_loaded_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(KEY_LINE + "\n")
    path.chmod(0o644)
    with capture_logs() as logs:
        assert KeySource(file=path).load()[0].id == "key-a"
        path.chmod(0o600)
        KeySource(file=path).load()
    assert [entry["event"] for entry in logs] == ["master_key_file_permissions"]
    assert logs[0]["hint"] == "chmod 600" and logs[0]["path"] == str(path)


def test_key_sources_name_themselves_in_their_errors(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError) as failure:
        KeySource(env_value="oops").load()
    assert str(failure.value) == "MOORAGE_MASTER_KEYS: entry 1 is not KEY_ID:BASE64."
    (tmp_path / "keys").write_text("oops")
    with pytest.raises(MasterKeyError) as failure:
        KeySource(file=tmp_path / "keys").load()
    assert str(failure.value) == f"{tmp_path / 'keys'}: entry 1 is not KEY_ID:BASE64."
    with pytest.raises(MasterKeyError) as failure:
        KeySource(file=tmp_path / "absent").load()
    assert str(failure.value) == (
        f"Master key file {tmp_path / 'absent'} does not exist. Create one with "
        "`moorage admin generate-master-key --output-file PATH`."
    )
    with pytest.raises(MasterKeyError) as failure:
        Keyring([])
    assert str(failure.value) == "A keyring needs at least one master key."


def test_generated_key_ids_carry_the_utc_date(monkeypatch: pytest.MonkeyPatch) -> None:
    class LateEvening(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> LateEvening:
            instant = datetime(2024, 1, 1, 23, 30, tzinfo=UTC).astimezone(tz)  # naive local time without tz
            return cls.fromtimestamp(instant.timestamp(), tz)

    monkeypatch.setattr(master_keys, "datetime", LateEvening)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: already 2 January locally
    time.tzset()
    try:
        assert generate_master_key().id.startswith("mk-20240101-")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_write_key_file_leaves_no_temporary_file_and_writes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keys"
    write_key_file(path, [parse_keys(KEY_LINE, origin="t")[0]])
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys"]
    text = path.read_text()
    assert text.startswith("# moorage master keys") and text.endswith(KEY_LINE + "\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_generated_default_key_file_is_kept_when_two_processes_start_at_once(tmp_path: Path) -> None:
    source = KeySource(file=tmp_path / "master.keys", may_generate=True)
    write_key_file(tmp_path / "master.keys", [parse_keys(KEY_LINE, origin="t")[0]])  # the other process won
    with capture_logs() as logs:
        assert source._generate().id == "key-a"
    assert logs == [] and sorted(p.name for p in tmp_path.iterdir()) == ["master.keys"]
    (tmp_path / "master.keys").write_text("oops")  # the winner's file is unreadable: say which file
    with pytest.raises(MasterKeyError) as failure:
        source._generate()
    assert str(failure.value) == f"{tmp_path / 'master.keys'}: entry 1 is not KEY_ID:BASE64."


def test_generating_the_default_key_says_where_it_is_and_to_back_it_up(tmp_path: Path) -> None:
    source = KeySource(file=tmp_path / "master.keys", may_generate=True)
    with capture_logs() as logs:
        key = source.load()[0]
    assert logs == [
        {
            "event": "master_key_generated",
            "log_level": "warning",
            "path": str(tmp_path / "master.keys"),
            "key_id": key.id,
            "note": "Development default. Back this file up: without it stored secrets cannot be decrypted.",
        }
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.keys"]


def test_the_reloading_keyring_logs_what_it_loads_and_what_it_could_not(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    key_b = generate_master_key("key-b")
    write_key_file(path, [parse_keys(KEY_LINE, origin="t")[0]])
    keyring = ReloadingKeyring(KeySource(file=path))
    with capture_logs() as logs:
        keyring.current()
        write_key_file(path, [parse_keys(KEY_LINE, origin="t")[0]])  # rewritten, same keys: nothing to say
        keyring.current()
        write_key_file(path, [key_b, parse_keys(KEY_LINE, origin="t")[0]])
        keyring.current()
        path.write_text("oops")
        assert keyring.current().active_id == "key-b"
    loaded = {"event": "master_keys_loaded", "log_level": "info", "source": str(path)}
    assert logs == [
        {**loaded, "active": "key-a", "keys": ["key-a"]},
        {**loaded, "active": "key-b", "keys": ["key-b", "key-a"]},
        {
            "event": "master_keys_reload_failed",
            "log_level": "error",
            "source": str(path),
            "error": f"{path}: entry 1 is not KEY_ID:BASE64.",
        },
    ]


def test_a_reloading_keyring_keeps_the_same_keyring_while_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write_key_file(path, [parse_keys(KEY_LINE, origin="t")[0]])
    keyring = ReloadingKeyring(KeySource(file=path))
    first = keyring.current()
    assert keyring.current() is first and keyring.reload() is first
    with pytest.raises(MasterKeyError, match="does not exist"):
        ReloadingKeyring(KeySource(file=tmp_path / "absent")).current()
    env = ReloadingKeyring(KeySource(env_value=KEY_LINE))
    sealed = env.seal("v", owner_aad("a"))
    assert env.open(sealed.blob, owner_aad("a")) == "v" and env.current() is env.current()
    assert isinstance(env.current(), Keyring)


# -- the failed-authentication throttle --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_says_what_it_does_and_when_to_retry() -> None:
    clock = Clock()
    throttle = AuthThrottle(SlidingWindowLimiter(clock), quota=2, window_s=90.0, clock=clock)
    for _ in range(2):
        throttle.failed("192.0.2.1")
    clock.now += 30.4
    with pytest.raises(Throttled) as refused:
        throttle.admit("192.0.2.1", "guess")
    assert str(refused.value) == (
        "Too many failed authentications from this address (2 per 90 s): credentials from it are not checked "
        "until Retry-After seconds have passed. Check the key you send (`moorage whoami`); credentials that "
        "already worked from this address keep working."
    )
    assert refused.value.retry_after_s == 60  # 59.6 s left, rounded up


def test_a_credential_is_remembered_for_exactly_remember_s() -> None:
    clock = Clock()
    throttle = AuthThrottle(SlidingWindowLimiter(clock), quota=1, window_s=10_000, remember_s=100.0, clock=clock)
    throttle.succeeded("192.0.2.1", "mine")
    throttle.failed("192.0.2.1")
    clock.now += 99.9
    throttle.admit("192.0.2.1", "mine")
    clock.now += 0.1
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.1", "mine")


def test_the_throttle_counts_in_its_own_buckets_of_a_shared_limiter() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    throttle = AuthThrottle(limiter, quota=1, window_s=60, clock=clock)
    assert limiter.acquire([Policy("key", "192.0.2.1", 1, 60)]).admitted  # an API key bucket named like an address
    throttle.admit("192.0.2.1", "guess")  # not counted against the address
    throttle.failed("192.0.2.1")
    assert limiter.footprint() == (2, 2)
    assert throttle._policy("192.0.2.1") == Policy("auth-failures", "auth-failures:192.0.2.1", 1, 60)


def test_a_disabled_throttle_remembers_nothing() -> None:
    clock = Clock()
    throttle = AuthThrottle(SlidingWindowLimiter(clock), quota=0, window_s=60, clock=clock)
    throttle.succeeded("192.0.2.1", "mine")
    throttle.failed("192.0.2.1")
    assert throttle.footprint() == (0, 0) and throttle.limiter.footprint() == (0, 0)


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_client_buckets(address: str, bucket: str) -> None:
    assert client_bucket(address) == bucket


# -- the limiter's decisions -------------------------------------------------------------------


def test_a_decision_reports_every_policy_and_retry_after_in_whole_seconds() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(clock)
    key, tenant = Policy("key", "key:k", 2, 60.0), Policy("tenant", "tenant:t", 3, 60.0)
    first = limiter.acquire([key, tenant])
    assert first == Decision(True, first.states, 0.0, ())
    assert [(s.policy.name, s.remaining, s.reset) for s in first.states] == [("key", 1, 60.0), ("tenant", 2, 60.0)]
    clock.now += 10.0
    limiter.acquire([key, tenant])
    refused = limiter.acquire([key, tenant])
    assert not refused.admitted and refused.exhausted == ("key",)
    assert refused.retry_after == 50.0 and refused.retry_after_s == 50
    assert [(s.remaining, s.reset) for s in refused.states] == [(0, 50.0), (1, 50.0)]
    assert Decision(True, (), 0.0, ()).retry_after_s == 1 and Decision(False, (), 0.2, ()).retry_after_s == 1
    assert limiter.peek([Policy("key", "key:new", 1, 5.0)]).states[0].reset == 0.0
