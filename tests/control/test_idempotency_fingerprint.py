"""Properties of the request fingerprint and of the key rule."""

from __future__ import annotations

import json

from hypothesis import assume, given
from hypothesis import strategies as st

from control.domain.idempotency import fingerprint, normalise_query, parse_key

methods = st.sampled_from(["POST", "PUT", "PATCH", "DELETE"])
paths = st.text(min_size=1, max_size=40).map(lambda p: "/" + p)
queries = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=4).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)
bodies = st.binary(max_size=200)


@given(methods, paths, queries, bodies)
def test_same_request_same_fingerprint(method: str, path: str, query: str, body: bytes) -> None:
    first = fingerprint(method, path, query, body)
    assert first == fingerprint(method, path, query, bytes(body))
    assert len(first) == 64 and int(first, 16) >= 0  # hex SHA-256


@given(methods, methods, paths, queries, bodies)
def test_a_different_method_changes_it(a: str, b: str, path: str, query: str, body: bytes) -> None:
    assume(a != b)
    assert fingerprint(a, path, query, body) != fingerprint(b, path, query, body)


@given(methods, paths, paths, queries, bodies)
def test_a_different_path_changes_it(method: str, a: str, b: str, query: str, body: bytes) -> None:
    assume(a != b)
    assert fingerprint(method, a, query, body) != fingerprint(method, b, query, body)


@given(methods, paths, queries, bodies, bodies)
def test_a_different_body_changes_it(method: str, path: str, query: str, a: bytes, b: bytes) -> None:
    assume(a != b)
    assert fingerprint(method, path, query, a) != fingerprint(method, path, query, b)


@given(methods, paths, queries, queries, bodies)
def test_query_changes_it_unless_only_the_order_differs(method: str, path: str, a: str, b: str, body: bytes) -> None:
    same = normalise_query(a) == normalise_query(b)
    assert (fingerprint(method, path, a, body) == fingerprint(method, path, b, body)) is same


@given(methods, paths, bodies, bodies)
def test_boundaries_between_parts_cannot_be_shifted(method: str, path: str, a: bytes, b: bytes) -> None:
    # Moving bytes from the path into the body (or query) never yields the same fingerprint.
    assume(a)
    assert fingerprint(method, path + "x", "", a) != fingerprint(method, path, "", b"x" + a)
    assert fingerprint(method, path, "x=1", b) != fingerprint(method, path, "", b"x=1" + b)


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=2, max_size=6))
def test_json_key_order_is_significant(document: dict[str, int]) -> None:
    """Documented decision: the body's bytes are fingerprinted, not its JSON meaning."""
    forward = json.dumps(document).encode()
    backward = json.dumps(dict(reversed(list(document.items())))).encode()
    assume(forward != backward)
    assert fingerprint("POST", "/v1/apps", "", forward) != fingerprint("POST", "/v1/apps", "", backward)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255))
def test_printable_ascii_keys_are_accepted(key: str) -> None:
    assume(not (len(key) >= 2 and key[0] == key[-1] == '"'))
    assert parse_key(key) == key
    assert parse_key(f'"{key}"') == key


@given(st.text(min_size=1, max_size=300))
def test_anything_else_is_refused(key: str) -> None:
    stripped = key.strip(" ")  # surrounding spaces only: a newline or tab is never part of a key
    if stripped.startswith('"') and stripped.endswith('"') and len(stripped) >= 2:
        stripped = stripped[1:-1]
    valid = 1 <= len(stripped) <= 255 and stripped.strip() != "" and all(0x20 <= ord(c) <= 0x7E for c in stripped)
    assert (parse_key(key) is not None) is valid
