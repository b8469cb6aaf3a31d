"""Properties of every name rule (``control.domain.names`` and the runtime's own): no value
holding a control or line-break character passes any of them, and every valid name passes
each entry point unchanged. ``re.match(r"...$")`` failed the first: ``$`` matches before a
trailing newline."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from control.api.request_context import _incoming_id
from control.domain import names
from control.domain.env import EnvValue, check_vars
from control.domain.errors import Invalid
from control.domain.idempotency import parse_key
from control.domain.links import check_env_name
from control.domain.releases import release_number
from control.ids import looks_like_id, new_id
from control.security.master_keys import MasterKey, MasterKeyError
from runtime import labels
from runtime.databases import backup
from runtime.databases.provision import hostname_for

# C0 controls, DEL, C1 controls (NEL \x85 among them) and the Unicode line and paragraph separators.
CONTROL = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + ["\u2028", "\u2029"]
RULES = {rule.kind: rule for rule in names.RULES}


def _refuses(call: Callable[[str], object], *errors: type[Exception]) -> Callable[[str], bool]:
    """An entry point as a predicate: refusing means raising one of ``errors`` or answering None."""

    def accepts(value: str) -> bool:
        try:
            return call(value) is not None
        except errors:
            return False

    return accepts


def _master_key(value: str) -> MasterKey:
    return MasterKey(value, bytes(32))


# Every way in: each shared rule, and each function that applies one to caller input.
ENTRY_POINTS: dict[str, tuple[Callable[[str], bool], re.Pattern[str]]] = {
    **{f"rule: {kind}": (rule.accepts, rule.pattern) for kind, rule in RULES.items()},
    "check_dns_label": (_refuses(lambda v: names.check_dns_label("name", v), Invalid), names.DNS_LABEL.pattern),
    "env var names (check_vars)": (_refuses(lambda v: check_vars({v: EnvValue("x")}) or v, Invalid), names.ENV_NAME.pattern),
    "link env_name": (_refuses(lambda v: check_env_name(v) or v, Invalid), names.ENV_NAME.pattern),
    "release_number": (_refuses(release_number, Invalid), names.RELEASE_NAME.pattern),
    "Idempotency-Key": (_refuses(parse_key), names.IDEMPOTENCY_KEY.pattern),
    "X-Request-ID": (
        _refuses(lambda v: _incoming_id({"headers": [(b"x-request-id", v.encode("latin-1", "replace"))]})),
        names.REQUEST_ID.pattern,
    ),
    "master key id": (_refuses(_master_key, MasterKeyError), names.MASTER_KEY_ID.pattern),
    "runtime dns_label": (_refuses(lambda v: labels.dns_label(v, "app"), ValueError), labels._DNS_LABEL),
    "runtime database hostname": (_refuses(hostname_for, ValueError), re.compile(r"[a-z0-9](?:[a-z0-9-]{0,57}[a-z0-9])?")),
    "runtime postgres identifier": (lambda v: backup._PG_IDENT.fullmatch(v) is not None, backup._PG_IDENT),
}


MAX_CHARS = {rule.pattern: rule.max_chars for rule in names.RULES if rule.max_chars is not None}
# Rules beyond the syntax: names the platform sets itself, and a key is sent without its padding.
EXTRA_RULES: dict[str, Callable[[str], bool]] = {
    "env var names (check_vars)": lambda v: v.upper() != "PORT" and not v.upper().startswith("MOORAGE_"),
    "link env_name": lambda v: v.upper() != "PORT" and not v.upper().startswith("MOORAGE_"),
    "Idempotency-Key": lambda v: v.strip(" ") == v,
}


def valid_names(pattern: re.Pattern[str]) -> st.SearchStrategy[str]:
    strategy = st.from_regex(pattern, fullmatch=True)
    if pattern in MAX_CHARS:
        strategy = strategy.filter(lambda v: len(v) <= MAX_CHARS[pattern])
    return strategy


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@given(data=st.data(), bad=st.sampled_from(CONTROL))
def test_a_control_character_anywhere_is_refused(entry: str, data: st.DataObject, bad: str) -> None:
    accepts, pattern = ENTRY_POINTS[entry]
    valid = data.draw(valid_names(pattern), label="valid")
    cut = data.draw(st.integers(min_value=0, max_value=len(valid)), label="cut")
    assert not accepts(valid + bad)  # the trailing newline of the attack, and every other control character
    assert not accepts(valid[:cut] + bad + valid[cut:])


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@given(data=st.data())
def test_valid_names_pass_every_entry_point(entry: str, data: st.DataObject) -> None:
    accepts, pattern = ENTRY_POINTS[entry]
    value = data.draw(valid_names(pattern))
    assume(EXTRA_RULES.get(entry, lambda v: True)(value))
    assert accepts(value), value


@given(st.text())
def test_check_returns_the_value_unchanged_or_names_the_field(value: str) -> None:
    for rule in names.RULES:
        try:
            assert rule.check("the_field", value) == value
        except Invalid as exc:
            assert exc.extra["errors"][0]["field"] == "the_field"
            assert "\n" not in exc.detail  # the refused value is quoted escaped
        else:
            assert not any(c in value for c in CONTROL)


@given(st.text(max_size=70))
def test_control_and_runtime_agree_on_dns_labels(value: str) -> None:
    assert names.DNS_LABEL.accepts(value) == labels.is_dns_label(value)


def test_resource_ids_made_here_are_valid_ids() -> None:
    for prefix in ("app", "dep", "ten", "key"):
        made = new_id(prefix)
        assert looks_like_id(made, prefix) and not looks_like_id(made + "\n", prefix)
