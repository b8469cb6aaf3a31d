"""Idempotency-Key piece by piece: the key and fingerprint rules (with a known answer, since
stored fingerprints outlive an upgrade), the claim cycle's boundaries on a real SQLite file
with a hand-set clock, and the ASGI helpers of the middleware on fake messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from control.api import idempotency as middleware
from control.api.spooled_body import SpooledBody
from control.domain import idempotency as domain
from control.domain.errors import LeaseLost
from control.domain.idempotency import (
    Claimed,
    IdempotencyService,
    InFlight,
    KeyReused,
    Replay,
    fingerprint,
    normalise_query,
    parse_key,
)
from control.domain.records import StoredResponse
from control.settings import Settings
from control.store.database import Store

# -- keys and fingerprints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ('  "a b"  ', "a b"),
        (" XkX ", "XkX"),
        ('"', '"'),  # one quote is not a quoted empty key
        ('""', None),
        ("\tabc", None),  # only spaces are trimmed: a control character is never part of a key
        ("abc\n", None),
        ("   ", None),
        ("x" * 255, "x" * 255),
        ("x" * 256, None),
    ],
)
def test_parse_key(raw: str, key: str | None) -> None:
    assert parse_key(raw) == key


def test_queries_are_normalised_by_sorting_and_keep_blank_values() -> None:
    assert normalise_query("b=2&a=1&a=0") == "a=0&a=1&b=2"
    assert normalise_query("b=1&a=") == "a=&b=1"
    assert normalise_query("") == ""


# Made by the code of the day this vector was committed: a retry sent across an upgrade
# must still match the fingerprint its first attempt stored.
KNOWN_FINGERPRINT = "580c150806d091fa2778a339a42557fafea7968ca931cb212a978a50af0468d6"


def test_the_fingerprint_encoding_is_pinned() -> None:
    assert fingerprint("post", "/v1/apps", "b=2&a=1", b'{"name":"web"}') == KNOWN_FINGERPRINT
    assert fingerprint("POST", "/v1/apps", "a=1&b=2", b'{"name":"web"}') == KNOWN_FINGERPRINT


def test_every_part_of_the_request_changes_the_fingerprint() -> None:
    base = fingerprint("POST", "/v1/apps", "a=1", b"{}")
    assert fingerprint("PATCH", "/v1/apps", "a=1", b"{}") != base
    assert fingerprint("POST", "/v1/apps/", "a=1", b"{}") != base
    assert fingerprint("POST", "/v1/apps", "a=2", b"{}") != base
    assert fingerprint("POST", "/v1/apps", "a=1", b"{ }") != base
    assert fingerprint("POST", "/v1/apps", "", b"a=1{}") != fingerprint("POST", "/v1/apps", "a=1", b"{}")
    # A path that is not valid UTF-8 (percent-decoded bytes) still gets a fingerprint of its own.
    assert fingerprint("POST", "/v1/\udcff", "", b"") != fingerprint("POST", "/v1/\udcfe", "", b"")


# -- the claim cycle ---------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LEASE, RETENTION = timedelta(seconds=60), timedelta(hours=1)
SPOOL_ROOT = Path("/dev/null/spool")  # the middleware tests' bodies are small: they never reach the disk
PRINT = fingerprint("POST", "/v1/apps", "", b"{}")


class Now:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def db(settings: Settings) -> Store:
    store = Store(f"sqlite:///{settings.data_dir / 'moorage.db'}")
    yield store  # type: ignore[misc]
    store.dispose()


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def service(db: Store, now: Now) -> IdempotencyService:
    return IdempotencyService(db, retention=RETENTION, lease=LEASE, now=now)


def _claim(service: IdempotencyService, fingerprint: str = PRINT) -> domain.Outcome:
    return service.claim("key_1", "ten_1", "k", fingerprint)


def test_a_first_claim_holds_a_lease_and_is_not_a_take_over(service: IdempotencyService) -> None:
    claimed = _claim(service)
    assert isinstance(claimed, Claimed) and claimed.taken_over is False and claimed.lease == T0 + LEASE
    assert _claim(service) == InFlight(60.0)
    assert _claim(service, "other") == KeyReused()
    assert service.claim("key_2", "ten_1", "k", PRINT).taken_over is False  # type: ignore[union-attr]


def test_a_lease_lapses_exactly_at_its_end(service: IdempotencyService, now: Now) -> None:
    first = _claim(service)
    now.at = T0 + LEASE - timedelta(microseconds=1)
    assert _claim(service) == InFlight(0.000001)
    now.at = T0 + LEASE
    taken = _claim(service)
    assert isinstance(taken, Claimed) and taken.taken_over is True and taken.lease == T0 + 2 * LEASE
    assert isinstance(first, Claimed) and taken.record_id == first.record_id
    with pytest.raises(LeaseLost) as lost:
        service.settle(first, StoredResponse(201, (), b"late"))
    assert str(lost.value) == f"Idempotency-Key record {first.record_id} was taken over by a retry"
    service.settle(taken, StoredResponse(201, (("content-type", "application/json"),), b"{}"))
    assert _claim(service) == Replay(StoredResponse(201, (("content-type", "application/json"),), b"{}"))


def test_a_record_expires_exactly_at_its_retention(service: IdempotencyService, now: Now) -> None:
    first = _claim(service)
    assert isinstance(first, Claimed)
    service.settle(first, StoredResponse(200, (), b"kept"))
    now.at = T0 + RETENTION - timedelta(microseconds=1)
    assert isinstance(_claim(service), Replay)
    assert _claim(service, "a different request") == KeyReused()
    now.at = T0 + RETENTION  # counted from completion (at T0 here)
    fresh = _claim(service, "a different request")  # the old record is purged on the spot
    assert isinstance(fresh, Claimed) and fresh.taken_over is False and fresh.lease == T0 + RETENTION + LEASE


def test_a_take_over_lost_to_another_retry_is_in_flight(
    service: IdempotencyService, now: Now, monkeypatch: pytest.MonkeyPatch
) -> None:
    _claim(service)
    now.at = T0 + 2 * LEASE
    monkeypatch.setattr(domain.IdempotencyRepository, "take_over", lambda *_: False)
    assert _claim(service) == InFlight(60.0)


def test_release_frees_the_key_at_once(service: IdempotencyService) -> None:
    claimed = _claim(service)
    assert isinstance(claimed, Claimed)
    assert service.release(claimed) is True
    assert service.release(claimed) is False
    again = _claim(service, "a different request")
    assert isinstance(again, Claimed) and again.taken_over is False


def test_a_settle_without_an_answer_frees_the_key(service: IdempotencyService) -> None:
    claimed = _claim(service)
    assert isinstance(claimed, Claimed)
    service.settle(claimed, None)
    assert isinstance(_claim(service, "a different request"), Claimed)


def test_retention_and_lease_must_be_positive(db: Store) -> None:
    for retention, lease in ((timedelta(0), LEASE), (RETENTION, timedelta(0))):
        with pytest.raises(ValueError) as refused:
            IdempotencyService(db, retention=retention, lease=lease)
        assert str(refused.value) == "idempotency retention and lease must be positive"
    assert IdempotencyService(db, retention=timedelta(microseconds=1), lease=timedelta(microseconds=1)).lease


# -- the middleware's ASGI helpers -------------------------------------------------------------


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def _receiver(*messages: dict[str, Any]) -> Callable[[], Any]:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


def _spool(tmp_path: Any, memory_bytes: int = 1024) -> SpooledBody:
    return SpooledBody(tmp_path / "spool", memory_bytes=memory_bytes)


def _read(receive: Callable[[], Any], body: SpooledBody, limit: int = 1 << 20) -> tuple[bool, bytes]:
    complete = _run(middleware._read_body(receive, body, limit))
    return complete, b"".join(body.pieces())


def test_a_body_is_read_across_chunks_and_defaults_apply(tmp_path: Any) -> None:
    chunks = _receiver({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"})
    assert _read(chunks, _spool(tmp_path)) == (True, b"abcd")
    assert _read(_receiver({"type": "http.request"}), _spool(tmp_path)) == (True, b"")
    bare = _receiver({"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"x", "more_body": False})
    assert _read(bare, _spool(tmp_path)) == (True, b"x")


def test_a_body_of_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Any) -> None:
    at_limit = _receiver({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"})
    assert _read(at_limit, _spool(tmp_path), limit=4) == (True, b"abcd")
    over = _receiver({"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.request", "body": b"de"})
    assert _read(over, _spool(tmp_path), limit=4) == (False, b"abc")


def test_a_client_gone_while_sending_its_body_is_noticed(tmp_path: Any) -> None:
    with pytest.raises(middleware._ClientGone):
        _run(middleware._read_body(_receiver({"type": "http.request", "body": b"a", "more_body": True}), _spool(tmp_path), 10))


def test_a_small_body_stays_in_memory_and_a_large_one_goes_wholly_to_an_unnamed_file(tmp_path: Any) -> None:
    small = _spool(tmp_path, memory_bytes=8)
    assert _read(_receiver({"type": "http.request", "body": b"1234567"}), small) == (True, b"1234567")
    assert not small.on_disk and not (tmp_path / "spool").exists()
    parts = [{"type": "http.request", "body": bytes([n]) * 5, "more_body": True} for n in range(5)]
    large = _spool(tmp_path, memory_bytes=8)
    complete, data = _read(_receiver(*parts, {"type": "http.request", "body": b"end"}), large)
    assert complete and data == b"".join(bytes([n]) * 5 for n in range(5)) + b"end"
    assert large.on_disk and large.size == 28 and large._pending == bytearray()  # all of it on disk, none held
    assert list((tmp_path / "spool").iterdir()) == []  # the file has no name: nothing to leave behind
    assert [len(p) for p in large.pieces()] == [8, 8, 8, 4]  # read back a piece at a time
    large.close()
    assert not large.on_disk


def test_the_body_is_replayed_once_then_the_real_receive_answers(tmp_path: Any) -> None:
    body = _spool(tmp_path)
    _read(_receiver({"type": "http.request", "body": b"body"}), body)
    replay = middleware._replaying_receive(body, _receiver({"type": "http.disconnect", "marker": 1}))

    async def twice() -> list[Any]:
        return [await replay(), await replay()]

    assert _run(twice()) == [
        {"type": "http.request", "body": b"body", "more_body": False},
        {"type": "http.disconnect", "marker": 1},
    ]


def test_a_spooled_body_is_replayed_in_pieces(tmp_path: Any) -> None:
    body = _spool(tmp_path, memory_bytes=4)
    _read(
        _receiver({"type": "http.request", "body": b"abcdef", "more_body": True}, {"type": "http.request", "body": b"gh"}), body
    )
    replay = middleware._replaying_receive(body, _receiver({"type": "http.disconnect"}))

    async def all_of_it() -> list[Any]:
        return [await replay() for _ in range(3)]

    assert _run(all_of_it()) == [
        {"type": "http.request", "body": b"abcd", "more_body": True},
        {"type": "http.request", "body": b"efgh", "more_body": False},
        {"type": "http.disconnect"},
    ]


def test_a_spooled_body_has_the_fingerprint_of_the_same_bytes_in_memory(tmp_path: Any) -> None:
    data = bytes(range(256)) * 9
    body = _spool(tmp_path, memory_bytes=100)
    _read(_receiver({"type": "http.request", "body": data}), body)
    assert body.on_disk
    scope: Any = {"method": "POST", "path": "/v1/apps/web/deployments", "query_string": b""}
    assert _run(middleware._fingerprint(scope, body)) == fingerprint("POST", "/v1/apps/web/deployments", "", data)
    with pytest.raises(ValueError, match="yielded 3 bytes, not the 4 declared"):
        domain.fingerprint_chunks("POST", "/", "", 4, [b"ab", b"c"])


def test_the_body_limit_is_the_routes_own_or_the_upload_limit_for_streamed_routes() -> None:
    from types import SimpleNamespace

    def handler(limit: int | None) -> Any:
        return SimpleNamespace(resolve_request_max_body_size=lambda: limit)

    assert middleware.body_limit({"route_handler": handler(5)}, 99) == 5  # type: ignore[typeddict-item]
    assert middleware.body_limit({"route_handler": handler(None)}, 99) == 99  # type: ignore[typeddict-item]
    assert middleware.body_limit({}, 99) == middleware.MAX_BODY_BYTES  # type: ignore[typeddict-item]


def _capture(*messages: dict[str, Any]) -> middleware._Captured:
    captured = middleware._Captured()

    async def feed() -> None:
        for message in messages:
            await captured.send(message)

    _run(feed())
    return captured


def test_an_answer_is_kept_with_only_the_headers_worth_replaying() -> None:
    captured = _capture(
        {"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"r1"),
                                                                   (b"Location", b"/v1/apps/web")]},
        {"type": "http.response.body", "body": b'{"a":', "more_body": True},
        {"type": "http.response.body", "body": b"1}"},
    )  # fmt: skip
    assert captured.storable() == StoredResponse(
        201, (("content-type", "application/json"), ("Location", "/v1/apps/web")), b'{"a":1}'
    )
    assert len(captured.messages) == 3


def test_what_is_not_kept() -> None:
    assert middleware._Captured().storable() is None  # nothing was answered (cancelled)
    assert _capture({"type": "http.response.start", "status": 200}).storable() is None  # no body yet
    unfinished = _capture({"type": "http.response.start", "status": 200}, {"type": "http.response.body", "more_body": True})
    assert unfinished.storable() is None
    assert _capture({"type": "http.response.start", "status": 500}, {"type": "http.response.body"}).storable() is None
    kept = _capture({"type": "http.response.start", "status": 499}, {"type": "http.response.body"})
    assert kept.storable() == StoredResponse(499, (), b"")


def test_an_answer_of_the_stored_limit_is_kept_and_one_byte_more_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(middleware, "MAX_STORED_BYTES", 3)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    assert _capture(start, {"type": "http.response.body", "body": b"abc"}).storable() == StoredResponse(200, (), b"abc")
    assert _capture(start, {"type": "http.response.body", "body": b"abcd"}).storable() is None


@pytest.mark.parametrize(("status", "length"), [(200, b"4"), (201, b"4"), (204, None), (205, b"4"), (304, None), (422, b"4")])
def test_a_replay_sends_the_kept_answer_marked_as_replayed(status: int, length: bytes | None) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    _run(middleware._send_replay(StoredResponse(status, (("content-type", "text/plain; charset=\u00e9"),), b"body"), send))
    expected_headers = [(b"content-type", "text/plain; charset=\u00e9".encode("latin-1"))]
    if length is not None:
        expected_headers.append((b"content-length", length))
    expected_headers.append((b"idempotent-replayed", b"true"))
    assert sent == [
        {"type": "http.response.start", "status": status, "headers": expected_headers},
        {"type": "http.response.body", "body": b"body", "more_body": False},
    ]


def test_headers_are_read_by_exact_lower_case_name() -> None:
    scope: Any = {"headers": [(b"x-other", b"1"), (b"idempotency-key", b"caf\xe9")]}
    assert middleware._header(scope, b"idempotency-key") == "caf\u00e9"
    assert middleware._header(scope, b"missing") is None


# -- the middleware on fake services: what reaches the app -------------------------------------


class Recorder:
    """An ASGI app that reads its body, listens once more (for a disconnect, as a long
    handler would) and answers 201."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.calls: list[tuple[Any, Any, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] == "http":
            self.received = [await receive(), await receive()]
            await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"made"})


class FakeService:
    def __init__(self, outcome: domain.Outcome) -> None:
        self.outcome = outcome
        self.settled: list[tuple[Claimed, StoredResponse | None]] = []

    def claim(self, api_key_id: str, tenant_id: str | None, key: str, request_fingerprint: str) -> domain.Outcome:
        self.claimed = (api_key_id, tenant_id, key, request_fingerprint)
        return self.outcome

    def settle(self, claim: Claimed, response: StoredResponse | None) -> None:
        self.settled.append((claim, response))

    def release(self, claim: Claimed) -> bool:
        return True


class FakeUnitOfWork:
    def __init__(self) -> None:
        self.on_failure_actions: list[Callable[[], object]] = []

    def on_failure(self, action: Callable[[], object]) -> None:
        self.on_failure_actions.append(action)


def _scope(service: FakeService, *, method: str = "POST", key: bytes | None = b"k-1", user: Any = None) -> dict[str, Any]:
    from types import SimpleNamespace

    from control.api.unit_of_work import STATE_KEY
    from control.security.principal import Principal

    outcomes: list[str] = []
    settings = SimpleNamespace(max_upload_bytes=1 << 20, data_dir=SPOOL_ROOT)
    services = SimpleNamespace(idempotency=service, metrics=SimpleNamespace(idempotency=outcomes.append), settings=settings)
    headers = [(b"content-type", b"application/json")] + ([(b"idempotency-key", key)] if key is not None else [])
    return {
        "type": "http",
        "method": method,
        "path": "/v1/apps",
        "query_string": b"b=2&a=1",
        "headers": headers,
        "user": Principal.of("key_1", "ten_1", ("deploy",)) if user is None else user,
        "app": SimpleNamespace(state=SimpleNamespace(services=services)),
        "state": {STATE_KEY: FakeUnitOfWork()},
        "outcomes": outcomes,
    }


def _call(scope: dict[str, Any], *messages: dict[str, Any]) -> tuple[Recorder, list[dict[str, Any]], Any]:
    app = Recorder()
    sent: list[dict[str, Any]] = []
    receive = _receiver(*messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    _run(middleware.IdempotencyMiddleware(app)(scope, receive, send))  # type: ignore[arg-type]
    return app, sent, receive


BODY = {"type": "http.request", "body": b'{"name":"web"}', "more_body": False}


@pytest.mark.parametrize(
    "scope_of",
    [
        pytest.param(lambda s: {**_scope(s), "type": "websocket"}, id="not-http"),
        pytest.param(lambda s: _scope(s, method="GET"), id="safe-method"),
        pytest.param(lambda s: _scope(s, user="node_1"), id="not-an-api-key"),
        pytest.param(lambda s: _scope(s, key=None), id="no-key"),
    ],
)
def test_requests_it_does_not_handle_reach_the_app_untouched(scope_of: Callable[[FakeService], dict[str, Any]]) -> None:
    service = FakeService(InFlight(1.0))
    scope = scope_of(service)
    app, _, receive = _call(scope, BODY)
    [(seen_scope, seen_receive, _)] = app.calls
    assert seen_scope is scope and seen_receive is receive
    assert not hasattr(service, "claimed") and scope["outcomes"] == []


def test_a_claimed_request_runs_on_the_buffered_body_and_its_answer_is_settled() -> None:
    claim = Claimed(7, T0 + LEASE, taken_over=False)
    service = FakeService(claim)
    scope = _scope(service)
    later = {"type": "http.disconnect", "later": True}
    app, sent, _ = _call(scope, BODY, later)
    assert service.claimed == ("key_1", "ten_1", "k-1", fingerprint("POST", "/v1/apps", "b=2&a=1", b'{"name":"web"}'))
    assert app.received == [BODY, later]  # the body once, then the client's own messages
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert service.settled == [(claim, StoredResponse(201, (("content-type", "text/plain"),), b"made"))]
    [release] = scope["state"]["unit_of_work"].on_failure_actions
    assert release() is True and scope["outcomes"] == ["stored"]


def test_a_take_over_is_logged_with_the_key_and_the_record() -> None:
    service = FakeService(Claimed(7, T0 + LEASE, taken_over=True))
    scope = _scope(service)
    with capture_logs() as logs:
        _call(scope, BODY)
    assert logs == [{"event": "idempotency_lease_taken_over", "log_level": "warning", "key_id": "key_1", "record_id": 7}]
    assert scope["outcomes"] == ["taken_over", "stored"]


def test_a_replay_answers_without_running_the_app() -> None:
    service = FakeService(Replay(StoredResponse(201, (("content-type", "text/plain"),), b"made")))
    scope = _scope(service)
    app, sent, _ = _call(scope, BODY)
    assert app.calls == [] and scope["outcomes"] == ["replayed"]
    assert sent[1] == {"type": "http.response.body", "body": b"made", "more_body": False}


def test_a_client_gone_before_its_body_arrived_claims_nothing() -> None:
    service = FakeService(InFlight(1.0))
    scope = _scope(service)
    app, sent, _ = _call(scope, {"type": "http.disconnect"})
    assert app.calls == [] and sent == [] and not hasattr(service, "claimed")


def test_a_body_declared_or_found_larger_than_the_limit_is_413_and_claims_nothing() -> None:
    from types import SimpleNamespace

    route = SimpleNamespace(resolve_request_max_body_size=lambda: None)  # streamed: the upload limit, 1 MiB here
    service = FakeService(InFlight(1.0))
    scope = {**_scope(service), "route_handler": route}
    scope["headers"].append((b"content-length", str((1 << 20) + 1).encode()))
    app, sent, _ = _call(scope, {"type": "http.disconnect"})  # refused before reading: the receive is never awaited
    assert app.calls == [] and not hasattr(service, "claimed") and sent[0]["status"] == 413
    assert b"at most 1048576 bytes" in sent[1]["body"]
    scope = {**_scope(service), "route_handler": route}
    app, sent, _ = _call(scope, {"type": "http.request", "body": b"x" * ((1 << 20) + 1)})
    assert app.calls == [] and not hasattr(service, "claimed") and sent[0]["status"] == 413


def test_the_background_sweep_logs_what_it_purged_and_what_failed() -> None:
    import anyio
    from sqlalchemy.exc import OperationalError

    from control.jobs.retention import Retention, sweep_forever

    results: list[Any] = [3, OperationalError("DELETE", {}, Exception("locked")), 0, 1]

    class Purging:
        def purge_expired(self) -> int:
            result = results.pop(0) if results else 0
            if isinstance(result, Exception):
                raise result
            return int(result)

    class Nothing:
        def purge_before(self, cutoff: object) -> int:
            return 0

        def prune_finished(self, **_: object) -> int:
            return 0

    retention = Retention(Purging(), Nothing(), Nothing(), audit_for=timedelta(days=1), jobs_for=timedelta(days=1), jobs_kept=1)  # type: ignore[arg-type]

    async def sweep() -> None:
        with anyio.move_on_after(0.5):
            await sweep_forever(retention, 0.01)

    with capture_logs() as logs:
        anyio.run(sweep)
    assert logs[0] == {"event": "retention_swept", "log_level": "info", "idempotency_records": 3}
    assert logs[1]["event"] == "retention_sweep_failed" and logs[1]["kind"] == "idempotency_records"
    assert logs[1]["error"].startswith("OperationalError")
    # a sweep that removed nothing says nothing
    assert logs[2] == {"event": "retention_swept", "log_level": "info", "idempotency_records": 1}
