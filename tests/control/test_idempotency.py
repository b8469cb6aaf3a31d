"""Idempotency-Key over the real app and a real SQLite file: replay, reuse, in flight,
lease take-over, retention, what is and is not stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from litestar import post
from sqlalchemy import func, select, update

from control.domain.errors import LeaseLost
from control.domain.idempotency import Claimed, InFlight, fingerprint
from control.domain.records import StoredResponse
from control.jobs.retention import sweep_forever
from control.store.models import AppRow, IdempotencyRecordRow
from tests.conftest import Caller
from tests.control.test_problems import assert_problem


def _key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def _rows(app: Any) -> list[IdempotencyRecordRow]:
    with app.state.services.db.read() as session:
        return list(session.scalars(select(IdempotencyRecordRow)))


def _app_count(app: Any) -> int:
    with app.state.services.db.read() as session:
        return session.scalar(select(func.count()).select_from(AppRow)) or 0


def test_same_key_same_request_replays_byte_for_byte(app, tenant: Caller) -> None:
    first = tenant.post("/v1/apps", json={"name": "web", "port": 9000}, headers=_key("k-1"))
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = tenant.post("/v1/apps", json={"name": "web", "port": 9000}, headers=_key("k-1"))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # fresh per answer
    assert _app_count(app) == 1
    [row] = _rows(app)
    assert (row.state, row.api_key_id, row.tenant_id, row.response_status) == ("completed", tenant.key_id, tenant.tenant_id, 201)
    assert row.fingerprint == fingerprint("POST", "/v1/apps", "", first.request.content)


def test_same_key_different_request_is_422(tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}, headers=_key("k-2")).status_code == 201
    for method, path, body in [
        ("POST", "/v1/apps", {"name": "other"}),  # body differs
        ("POST", "/v1/keys", {"name": "web"}),  # path differs
        ("PATCH", "/v1/apps/web", {"port": 1}),  # method and path differ
    ]:
        response = tenant.request(method, path, json=body, headers=_key("k-2"))
        assert_problem(response, 422, "idempotency-key-reused")
    # Query parameters count too, in any order.
    assert tenant.post("/v1/apps?a=1&b=2", json={"name": "q"}, headers=_key("k-q")).status_code == 201
    replay = tenant.post("/v1/apps?b=2&a=1", json={"name": "q"}, headers=_key("k-q"))
    assert replay.headers.get("idempotent-replayed") == "true"
    assert_problem(tenant.post("/v1/apps?a=1", json={"name": "q"}, headers=_key("k-q")), 422, "idempotency-key-reused")


def test_json_key_order_is_significant(tenant: Caller) -> None:
    body_a = b'{"name": "web", "port": 9000}'
    body_b = b'{"port": 9000, "name": "web"}'
    json_header = {"content-type": "application/json", **_key("k-order")}
    assert tenant.post("/v1/apps", content=body_a, headers=json_header).status_code == 201
    assert_problem(tenant.post("/v1/apps", content=body_b, headers=json_header), 422, "idempotency-key-reused")


def test_keys_are_scoped_per_api_key(operator: Caller, tenant: Caller) -> None:
    other = operator.post(f"/v1/tenants/{tenant.tenant_id}/keys", json={"scopes": ["deploy"]}).json()
    second = Caller(tenant.client, other["token"], other["id"], tenant.tenant_id)
    assert tenant.post("/v1/apps", json={"name": "web"}, headers=_key("shared")).status_code == 201
    # Same key string, another API key: not a replay; the request really runs (and conflicts).
    assert_problem(second.post("/v1/apps", json={"name": "web"}, headers=_key("shared")), 409, "name-taken")


def test_without_a_key_requests_just_run(tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    assert_problem(tenant.post("/v1/apps", json={"name": "web"}), 409, "name-taken")


def test_safe_methods_ignore_the_key(app, tenant: Caller) -> None:
    response = tenant.get("/v1/apps", headers=_key("k-get"))
    assert response.status_code == 200 and "idempotent-replayed" not in response.headers
    assert _rows(app) == []


MALFORMED_KEYS = ["", '""', "a" * 256, "tab\there", "new\x7fline", "caf\xe9", "  "]


def test_malformed_keys_are_400(app, tenant: Caller) -> None:
    for value in MALFORMED_KEYS:
        response = tenant.post("/v1/apps", json={"name": "web"}, headers={"Idempotency-Key": value.encode("latin-1")})
        body = assert_problem(response, 400, "idempotency-key-invalid")
        assert "printable ASCII" in body["detail"], value
    assert _app_count(app) == 0 and _rows(app) == []


def test_quoted_and_bare_keys_are_the_same_key(tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}, headers=_key('"sf-string"')).status_code == 201
    replay = tenant.post("/v1/apps", json={"name": "web"}, headers=_key("sf-string"))
    assert replay.headers["idempotent-replayed"] == "true"
    long_ok = tenant.post("/v1/apps", json={"name": "web2"}, headers=_key("x" * 255))
    assert long_ok.status_code == 201


def test_4xx_answers_are_stored_and_replayed(app, tenant: Caller) -> None:
    bad = tenant.post("/v1/apps", json={"name": "Not A Label"}, headers=_key("k-4xx"))
    assert_problem(bad, 422, "validation-failed")
    replay = tenant.post("/v1/apps", json={"name": "Not A Label"}, headers=_key("k-4xx"))
    assert replay.status_code == 422 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == bad.content  # including the first answer's request_id: it is a replay


def test_delete_is_replayed_not_404(app, tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}).status_code == 201
    gone = tenant.delete("/v1/apps/web", headers=_key("k-del"))
    assert gone.status_code == 204
    again = tenant.delete("/v1/apps/web", headers=_key("k-del"))
    assert again.status_code == 204 and again.headers["idempotent-replayed"] == "true"
    assert "content-length" not in again.headers or again.headers["content-length"] == "0"


@pytest.mark.own_app
def test_5xx_is_not_stored_and_a_retry_runs_again(app, tenant: Caller) -> None:
    calls: list[int] = []

    @post("/v1/test-flaky", opt={"access": "deploy"}, status_code=201, sync_to_thread=False)
    def flaky() -> dict[str, int]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": len(calls)}

    app.register(flaky)
    assert_problem(tenant.post("/v1/test-flaky", json={}, headers=_key("k-5xx")), 500, "internal-error")
    assert _rows(app) == []  # the lease was released, nothing kept
    retry = tenant.post("/v1/test-flaky", json={}, headers=_key("k-5xx"))
    assert retry.status_code == 201 and retry.json() == {"attempt": 2}
    replay = tenant.post("/v1/test-flaky", json={}, headers=_key("k-5xx"))
    assert replay.json() == {"attempt": 2} and replay.headers["idempotent-replayed"] == "true"
    assert len(calls) == 2


def _claim_as(app: Any, caller: Caller, key: str, body: bytes) -> Claimed:
    service = app.state.services.idempotency
    outcome = service.claim(caller.key_id, caller.tenant_id, key, fingerprint("POST", "/v1/apps", "", body))
    assert isinstance(outcome, Claimed)
    return outcome


def test_in_flight_key_is_409_with_retry_after(app, tenant: Caller) -> None:
    body = b'{"name":"web"}'
    _claim_as(app, tenant, "k-busy", body)  # another worker is processing it right now
    response = tenant.post("/v1/apps", content=body, headers={"content-type": "application/json", **_key("k-busy")})
    problem = assert_problem(response, 409, "idempotency-key-in-flight")
    assert int(response.headers["retry-after"]) >= 1
    assert "Retry-After" in problem["detail"]
    assert _app_count(app) == 0


def test_expired_lease_is_taken_over_by_a_retry(app, tenant: Caller) -> None:
    """A worker claimed the key and died: after the lease lapses, a retry runs the request."""
    body = b'{"name":"web"}'
    crashed = _claim_as(app, tenant, "k-crash", body)
    with app.state.services.db.write() as session:  # let the lease run out
        session.execute(update(IdempotencyRecordRow).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    headers = {"content-type": "application/json", **_key("k-crash")}
    retry = tenant.post("/v1/apps", content=body, headers=headers)
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    assert _app_count(app) == 1
    assert tenant.post("/v1/apps", content=body, headers=headers).headers["idempotent-replayed"] == "true"
    # The dead worker, should it wake up, can neither overwrite nor delete its successor's answer.
    services = app.state.services
    assert _settled(app, crashed, StoredResponse(500, (), b"stale")) is False
    assert _settled(app, crashed, None) is False
    assert services.idempotency.release(crashed) is False
    [row] = _rows(app)
    assert row.state == "completed" and row.response_body == retry.content


def _expire_leases(app: Any) -> None:
    with app.state.services.db.write() as session:
        session.execute(update(IdempotencyRecordRow).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))


def _settled(app: Any, claim: Claimed, response: StoredResponse | None) -> bool:
    """Settle ``claim`` as a request's unit of work does; False when its lease was lost."""
    with app.state.services.db.unit_of_work() as uow:
        app.state.services.idempotency.settle(claim, response)
        try:
            uow.commit()
        except LeaseLost:
            return False
    return True


def test_a_request_killed_before_its_unit_of_work_commits_leaves_nothing_and_runs_again(app, tenant: Caller) -> None:
    """The process died after the handler's writes but before the answer was stored (kill -9):
    they were one uncommitted transaction, so the retry taking the key over runs the request
    as if for the first time, and exactly one app exists."""
    body = b'{"name":"web"}'
    crashed = _claim_as(app, tenant, "k-died", body)
    with app.state.services.db.unit_of_work():  # the request's unit: the handler wrote, then the crash
        app.state.services.apps.create(tenant.tenant_id, "web")
    assert _app_count(app) == 0
    [row] = _rows(app)
    assert row.state == "in_flight" and row.id == crashed.record_id
    _expire_leases(app)

    headers = {"content-type": "application/json", **_key("k-died")}
    retry = tenant.post("/v1/apps", content=body, headers=headers)
    assert retry.status_code == 201, retry.text
    assert _app_count(app) == 1
    again = tenant.post("/v1/apps", content=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == retry.json()
    assert _app_count(app) == 1


def test_a_request_whose_key_was_taken_over_keeps_nothing(app, tenant: Caller) -> None:
    """A request stalled past its lease while a retry took the key over: when it finally
    settles, its whole unit of work (its writes and its answer) is refused."""
    body = b'{"name":"web"}'
    stalled = _claim_as(app, tenant, "k-stalled", body)
    _expire_leases(app)
    retry = tenant.post("/v1/apps", content=body, headers={"content-type": "application/json", **_key("k-stalled")})
    assert retry.status_code == 201
    with app.state.services.db.unit_of_work() as uow:
        app.state.services.apps.create(tenant.tenant_id, "web-late")
        app.state.services.idempotency.settle(stalled, StoredResponse(201, (), b"late"))
        with pytest.raises(LeaseLost):
            uow.commit()
    assert _app_count(app) == 1
    [row] = _rows(app)
    assert row.state == "completed" and row.response_body == retry.content


def test_lease_taken_over_in_the_service_directly(app, tenant: Caller) -> None:
    service = app.state.services.idempotency
    first = _claim_as(app, tenant, "k-lease", b"{}")
    second = service.claim(tenant.key_id, tenant.tenant_id, "k-lease", fingerprint("POST", "/v1/apps", "", b"{}"))
    assert isinstance(second, InFlight) and 0 < second.lease_left_s <= service.lease.total_seconds()
    service.now = lambda: datetime.now(UTC) + service.lease + timedelta(seconds=1)
    taken = service.claim(tenant.key_id, tenant.tenant_id, "k-lease", fingerprint("POST", "/v1/apps", "", b"{}"))
    assert isinstance(taken, Claimed) and taken.taken_over and taken.record_id == first.record_id
    assert _settled(app, taken, StoredResponse(201, (("content-type", "application/json"),), b"{}")) is True


def test_expired_records_are_replaced_and_purged(app, tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}, headers=_key("k-old")).status_code == 201
    assert tenant.post("/v1/apps", json={"name": "web2"}, headers=_key("k-old2")).status_code == 201
    with app.state.services.db.write() as session:  # a day passes
        session.execute(update(IdempotencyRecordRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    # An expired key is simply new again: this request runs (and meets the app made earlier).
    assert_problem(tenant.post("/v1/apps", json={"name": "web"}, headers=_key("k-old")), 409, "name-taken")
    assert len(_rows(app)) == 2
    assert app.state.services.idempotency.purge_expired() == 1  # k-old2; k-old holds a fresh record
    assert [r.idempotency_key for r in _rows(app)] == ["k-old"]


def test_background_sweep_purges(app, tenant: Caller) -> None:
    assert tenant.post("/v1/apps", json={"name": "web"}, headers=_key("k-sweep")).status_code == 201
    with app.state.services.db.write() as session:
        session.execute(update(IdempotencyRecordRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))

    async def sweep_briefly() -> None:
        with anyio.move_on_after(0.3):  # several sweeps at 20 ms intervals
            await sweep_forever(app.state.services.retention, 0.02)

    anyio.run(sweep_briefly)
    assert _rows(app) == []


def test_retention_comes_from_settings(tmp_path) -> None:
    from control.bootstrap import bootstrap
    from control.settings import Settings

    settings = Settings(data_dir=tmp_path, idempotency_retention_s=7, idempotency_lease_s=3)
    services = bootstrap(settings)
    assert services.idempotency.retention == timedelta(seconds=7)
    assert services.idempotency.lease == timedelta(seconds=3)
    env = Settings.from_env({"MOORAGE_IDEMPOTENCY_RETENTION_S": "60", "MOORAGE_DATA_DIR": str(tmp_path)})
    assert env.idempotency_retention_s == 60
    services.db.dispose()


def test_openapi_documents_the_header_on_every_mutating_operation(client) -> None:
    spec = client.get("/openapi.json").json()
    mutating = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            if operation.get("security") == [{"NodeToken": []}]:
                continue  # inference nodes: no API key, so no Idempotency-Key (register/heartbeat are idempotent)
            if method in {"post", "put", "patch", "delete"}:
                mutating += 1
                assert "Idempotency-Key" in names, f"{method} {path}"
                assert {"409", "422", "429"} <= operation["responses"].keys(), f"{method} {path}"
            elif path.startswith("/v1"):
                assert "Idempotency-Key" not in names
                assert "429" in operation["responses"], f"{method} {path}"
    assert mutating >= 8


def test_oversized_request_body_is_413_and_claims_nothing(app, tenant: Caller) -> None:
    from control.api.idempotency import MAX_BODY_BYTES

    body = b"x" * (MAX_BODY_BYTES + 1)
    response = tenant.post("/v1/apps", content=body, headers={"content-type": "application/json", **_key("k-big")})
    detail = assert_problem(response, 413, "payload-too-large")["detail"]
    assert detail == "The request body is too large: at most 10000000 bytes are accepted here."  # Litestar's default route limit
    assert _rows(app) == []


@pytest.mark.own_app
def test_answers_too_large_to_keep_are_passed_on_and_released(app, tenant: Caller) -> None:
    from control.api.idempotency import MAX_STORED_BYTES

    calls: list[int] = []

    @post("/v1/test-huge", opt={"access": "deploy"}, status_code=200, sync_to_thread=False)
    def huge() -> dict[str, str]:
        calls.append(1)
        return {"blob": "y" * (MAX_STORED_BYTES + 1)}

    app.register(huge)
    first = tenant.post("/v1/test-huge", json={}, headers=_key("k-huge"))
    assert first.status_code == 200 and len(first.content) > MAX_STORED_BYTES
    second = tenant.post("/v1/test-huge", json={}, headers=_key("k-huge"))
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert len(calls) == 2 and _rows(app) == []  # not kept: a retry runs again, as after a 5xx
    assert _outcomes(app) == {"released": 2}


def test_a_failing_sweep_does_not_end_the_loop(tmp_path) -> None:
    from control.domain.audit import AuditService
    from control.domain.idempotency import IdempotencyService
    from control.jobs.queue import JobQueue
    from control.jobs.retention import Retention
    from control.store.database import Store

    unmigrated = Store(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: every step of every sweep fails
    service = IdempotencyService(unmigrated, retention=timedelta(hours=1), lease=timedelta(seconds=5))
    failures: list[int] = []
    original = service.purge_expired

    def counting_purge() -> int:
        failures.append(1)
        return original()

    service.purge_expired = counting_purge  # type: ignore[method-assign]

    async def sweep_briefly() -> None:
        with anyio.move_on_after(1.0):  # a loaded machine still fits several sweeps
            retention = Retention(
                service,
                AuditService(unmigrated),
                JobQueue(unmigrated),
                audit_for=timedelta(days=1),
                jobs_for=timedelta(days=1),
                jobs_kept=10,
            )
            await sweep_forever(retention, 0.02)

    anyio.run(sweep_briefly)
    assert len(failures) >= 2  # it kept going after the first failure
    unmigrated.dispose()


def _outcomes(app: Any) -> dict[str, float]:
    registry = app.state.services.metrics.registry
    names = ("stored", "released", "replayed", "in_flight", "key_reused", "invalid_key", "taken_over")
    counts = {name: registry.get_sample_value("moorage_idempotency_outcomes_total", {"outcome": name}) or 0.0 for name in names}
    return {name: count for name, count in counts.items() if count}


def test_every_outcome_is_counted_and_says_what_to_do(app, tenant: Caller) -> None:
    from control.domain.idempotency import KEY_RULE

    assert _outcomes(app) == {}
    json_body = {"content-type": "application/json"}
    invalid = assert_problem(tenant.post("/v1/apps", json={"name": "web"}, headers=_key("")), 400, "idempotency-key-invalid")
    assert invalid["detail"] == f"The Idempotency-Key header must be {KEY_RULE}. Send a new, valid key."
    assert tenant.post("/v1/apps", content=b'{"name":"web"}', headers={**json_body, **_key("k-1")}).status_code == 201
    assert tenant.post("/v1/apps", content=b'{"name":"web"}', headers={**json_body, **_key("k-1")}).status_code == 201
    reused = assert_problem(tenant.post("/v1/apps", json={"name": "other"}, headers=_key("k-1")), 422, "idempotency-key-reused")
    assert reused["detail"] == (
        "This Idempotency-Key was already used for a different request (method, path, query or body differ). "
        "Use a new key for a new request; resend the exact same request to get its answer."
    )
    _claim_as(app, tenant, "k-busy", b'{"name":"busy"}')
    busy = tenant.post("/v1/apps", content=b'{"name":"busy"}', headers={**json_body, **_key("k-busy")})
    detail = assert_problem(busy, 409, "idempotency-key-in-flight")["detail"]
    assert busy.headers["retry-after"] == "1"  # poll soon: the first attempt may finish any moment
    assert detail == (
        "A request with this Idempotency-Key is still being processed. Retry after Retry-After seconds "
        "to get its answer (if it was lost, the key frees up within 60 s)."
    )
    _expire_leases(app)
    assert tenant.post("/v1/apps", content=b'{"name":"busy"}', headers={**json_body, **_key("k-busy")}).status_code == 201
    assert _outcomes(app) == {"invalid_key": 1, "stored": 2, "replayed": 1, "key_reused": 1, "in_flight": 1, "taken_over": 1}


def test_a_query_string_is_part_of_the_fingerprint(app, tenant: Caller) -> None:
    assert tenant.post("/v1/apps?x=1", json={"name": "web"}, headers=_key("k-query")).status_code == 201
    [row] = _rows(app)
    assert row.fingerprint == fingerprint("POST", "/v1/apps", "x=1", b'{"name":"web"}')


@pytest.mark.own_app
def test_a_request_whose_commit_fails_frees_its_key_at_once(app, tenant: Caller) -> None:
    """Nothing was written, so the key must not stay locked until its lease lapses."""
    calls: list[int] = []

    def boom(session: Any) -> None:
        raise RuntimeError("the commit fails")

    @post("/v1/test-uncommitted", opt={"access": "deploy"}, status_code=200, sync_to_thread=False)
    def uncommitted() -> dict[str, int]:
        calls.append(1)
        app.state.services.db.defer_write(boom)
        return {"attempt": len(calls)}

    app.register(uncommitted)
    for attempt in (1, 2):
        assert_problem(tenant.post("/v1/test-uncommitted", json={}, headers=_key("k-commit")), 500, "internal-error")
        assert len(calls) == attempt and _rows(app) == []  # run again, not 409 in flight
    assert _outcomes(app) == {"stored": 2}  # the answer was kept in the unit of work that then failed


def test_public_routes_that_ask_for_it_scope_keys_to_the_route(app, client, operator: Caller) -> None:
    """Registration takes no API key: its keys belong to the route, and a replay needs the
    same body (the registration token inside it)."""
    token = operator.post("/v1/registration-tokens", json={"uses": 5}).json()["token"]
    body = {"tenant_name": "keyed", "token": token}
    first = client.post("/v1/register", json=body, headers=_key("reg-1"))
    again = client.post("/v1/register", json=body, headers=_key("reg-1"))
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    other = client.post("/v1/register", json={**body, "tenant_name": "other"}, headers=_key("reg-1"))
    assert_problem(other, 422, "idempotency-key-reused")
    assert [(r.api_key_id, r.tenant_id) for r in _rows(app)] == [("public:/v1/register", None)]
    bad = client.post("/v1/register", json=body, headers=_key("bad\x7fkey"))
    assert_problem(bad, 400, "idempotency-key-invalid")


def test_other_public_posts_are_never_claimed(app, client, operator: Caller) -> None:
    """Node routes carry no API key and do not ask for route-scoped keys: the header is ignored."""
    node = operator.post("/v1/nodes", json={"name": "n1"}).json()
    headers = {"Authorization": f"Bearer {node['token']}", **_key("node-1")}
    for _ in range(2):  # refused (no models), an answer a claimed key would have kept and replayed
        answer = client.post("/v1/nodes/register", json={"state": "starting"}, headers=headers)
        assert answer.status_code == 422 and "idempotent-replayed" not in answer.headers, answer.text
    assert _rows(app) == []
