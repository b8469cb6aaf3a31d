"""The audit log: every mutating call with its outcome, scoped reads, and nothing secret in it."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta

import pytest
from litestar import post
from sqlalchemy import select, text

from control.logging import attach_stream
from control.store.models import AuditEventRow
from tests.conftest import Caller
from tests.control.test_problems import assert_problem


def events(caller: Caller, path: str = "/v1/audit", **params: object) -> list[dict]:
    response = caller.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_each_mutating_call_is_recorded_with_its_outcome(new_tenant) -> None:
    admin = new_tenant("acme", ["admin"])
    reader_key = admin.post("/v1/keys", json={"scopes": ["read"], "name": "ro"})
    reader = Caller(admin.client, reader_key.json()["token"], reader_key.json()["id"], admin.tenant_id)
    calls = [
        admin.post("/v1/apps", json={"name": "web"}),
        admin.patch("/v1/apps/web", json={"port": 9000}),
        admin.post("/v1/apps", json={"name": "Not A Label"}),
        reader.post("/v1/apps", json={"name": "nope"}),
        admin.get("/v1/apps"),
        admin.get("/v1/apps/web"),
        admin.delete("/v1/apps/web"),
    ]
    assert [c.status_code for c in calls] == [201, 200, 422, 403, 200, 200, 204]
    recorded = events(admin)[::-1]  # oldest first, to compare with the calls
    assert [(e["action"], e["target"], e["outcome"]) for e in recorded] == [
        ("POST /v1/keys", "/v1/keys", 201),
        ("POST /v1/apps", "/v1/apps", 201),
        ("PATCH /v1/apps/{app}", "/v1/apps/web", 200),
        ("POST /v1/apps", "/v1/apps", 422),
        ("POST /v1/apps", "/v1/apps", 403),
        ("DELETE /v1/apps/{app}", "/v1/apps/web", 204),
    ]  # and no GETs
    assert {e["tenant_id"] for e in recorded} == {admin.tenant_id}
    by_key = [e["api_key_id"] for e in recorded]
    assert by_key == [admin.key_id, admin.key_id, admin.key_id, admin.key_id, reader.key_id, admin.key_id]
    mutating = [c for c in calls if c.request.method != "GET"]
    assert [e["request_id"] for e in recorded[1:]] == [c.headers["x-request-id"] for c in mutating]
    created = datetime.fromisoformat(recorded[0]["created_at"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    assert recorded[0]["id"].startswith("aud_")


@pytest.mark.own_app
def test_operator_calls_unauthenticated_calls_and_server_errors_are_recorded(app, operator: Caller, tenant: Caller) -> None:
    @post("/v1/test-audit-boom", opt={"access": "deploy"}, sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("internals")

    app.register(boom)
    assert tenant.post("/v1/test-audit-boom").status_code == 500
    assert tenant.client.post("/v1/apps", json={"name": "anon"}).status_code == 401
    assert operator.post("/v1/tenants", json={"name": "Bad Name"}).status_code == 422
    assert tenant.request("PUT", "/v1/no-such-route").status_code == 404
    recorded = {(e["action"], e["outcome"]): e for e in events(operator, "/v1/operator/audit", limit=200)}
    assert recorded[("POST /v1/test-audit-boom", 500)]["tenant_id"] == tenant.tenant_id
    anonymous = recorded[("POST /v1/apps", 401)]
    assert anonymous["tenant_id"] is None and anonymous["api_key_id"] is None
    by_operator = recorded[("POST /v1/tenants", 422)]
    assert by_operator["tenant_id"] is None and by_operator["api_key_id"] == operator.key_id
    assert recorded[("PUT <unmatched>", 404)]["target"] == "/v1/no-such-route"
    # The fixture's own calls: the operator created the tenant and issued its key.
    assert ("POST /v1/tenants/{tenant_id}/keys", 201) in recorded


def test_tenants_see_their_own_events_and_operators_see_all(operator: Caller, new_tenant) -> None:
    alpha, beta = new_tenant("alpha", ["admin"]), new_tenant("beta", ["admin"])
    alpha.post("/v1/apps", json={"name": "a1"})
    beta.post("/v1/apps", json={"name": "b1"})
    assert {e["target"] for e in events(alpha)} == {"/v1/apps"}
    assert {e["tenant_id"] for e in events(alpha)} == {alpha.tenant_id}
    assert {e["tenant_id"] for e in events(beta)} == {beta.tenant_id}
    everything = events(operator, "/v1/operator/audit")
    assert {alpha.tenant_id, beta.tenant_id, None} == {e["tenant_id"] for e in everything}
    only_beta = events(operator, "/v1/operator/audit", tenant_id=beta.tenant_id)
    assert [e["tenant_id"] for e in only_beta] == [beta.tenant_id]


def test_who_may_read_the_log(operator: Caller, new_tenant) -> None:
    deployer = new_tenant("deployer", ["deploy"])
    assert_problem(deployer.get("/v1/audit"), 403, "insufficient-scope")
    assert_problem(operator.get("/v1/audit"), 403, "tenant-key-required")
    admin = new_tenant("admin", ["admin"])
    assert_problem(admin.get("/v1/operator/audit"), 403, "operator-required")


def test_pages_newest_first_and_filters(operator: Caller, tenant: Caller) -> None:
    for i in range(7):
        tenant.post("/v1/apps", json={"name": f"app-{i}"})
    tenant.delete("/v1/apps/app-0")
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = tenant.get("/v1/audit", params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8 and len({e["id"] for e in seen}) == 8
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)
    assert seen[0]["action"] == "DELETE /v1/apps/{app}"
    assert [e["target"] for e in events(tenant, action="DELETE /v1/apps/{app}")] == ["/v1/apps/app-0"]
    assert len(events(tenant, action="POST /v1/apps")) == 7
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert events(tenant, since=future) == []
    naive_past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert len(events(tenant, since=naive_past)) == 8
    body = assert_problem(tenant.get("/v1/audit", params={"since": "yesterday"}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "since"
    body = assert_problem(tenant.get("/v1/audit", params={"limit": 0}), 422, "validation-failed")
    assert body["errors"][0]["field"] == "limit"


def test_secret_reveals_are_recorded_but_plain_reads_are_not(tenant: Caller) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    tenant.request("PUT", "/v1/apps/web/env", json={"vars": {"A": "1"}})
    tenant.get("/v1/apps/web/env")
    tenant.get("/v1/apps/web/env", params={"reveal": "true"})
    actions = [e["action"] for e in events(tenant)]
    assert actions == ["GET /v1/apps/{app}/env?reveal=true", "PUT /v1/apps/{app}/env", "POST /v1/apps"]


def test_the_log_never_holds_tokens_or_values(app, operator: Caller, tenant: Caller) -> None:
    issued = tenant.post("/v1/keys", json={"scopes": ["deploy"], "name": "ci"}).json()
    tenant.post("/v1/apps", json={"name": "web"})
    secret_values = ["AUDIT-CANARY-VALUE-1", "AUDIT-CANARY-VALUE-2"]
    tenant.request("PUT", "/v1/apps/web/env", json={"vars": {"DB_PASSWORD": secret_values[0]}})
    tenant.patch("/v1/apps/web/env", json={"vars": {"DB_PASSWORD": secret_values[1], "bad name": "AUDIT-CANARY-BAD"}})
    tenant.request("PUT", "/v1/apps/web/env/TOKEN", json={"value": secret_values[0]})
    tenant.get("/v1/apps/web/env", params={"reveal": "true", "token": issued["token"]})
    tenant.client.post("/v1/apps", json={"name": "x"}, headers={"Authorization": f"Bearer {issued['token']}x"})
    with app.state.services.db.read() as session:
        rows = session.execute(select(AuditEventRow)).all()
        dumped = repr([tuple(r[0].__dict__.values()) for r in rows])
    assert len(rows) >= 7
    for needle in [
        issued["token"],
        issued["token"].split("_", 4)[4],  # its secret (mrg_live_key_<id>_<secret>: the secret itself may hold "_")
        tenant.token,
        operator.token,
        *secret_values,
        "AUDIT-CANARY",
    ]:
        assert needle not in dumped


def test_a_call_whose_audit_row_cannot_be_written_keeps_nothing_and_says_so(app, tenant: Caller) -> None:
    # The event commits with the call's own writes: a change with no trail is never kept.
    with app.state.services.db.write() as session:
        session.execute(text("DROP TABLE audit_events"))  # a real failure, not a stand-in
    captured = io.StringIO()
    handler = attach_stream(captured)
    try:
        response = tenant.post("/v1/apps", json={"name": "not-kept"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "nothing was done" in response.json()["detail"]
    assert tenant.get("/v1/apps/not-kept").status_code == 404
    logs = captured.getvalue()
    assert "request_not_committed" in logs and "audit_write_failed" in logs


def test_high_volume_non_mutating_posts_stay_out_of_the_log(operator: Caller, tenant: Caller) -> None:
    # Gateway completions are recorded as usage rows, node heartbeats as the node's state.
    assert tenant.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code in (404, 422, 503)
    enrolled = operator.post("/v1/nodes", json={"name": "gpu-1"})
    assert enrolled.status_code == 201, enrolled.text
    node_id, node_auth = enrolled.json()["node"]["id"], {"Authorization": f"Bearer {enrolled.json()['token']}"}
    model = {"name": "tiny", "engine_model": "/models/tiny"}
    report = {"state": "healthy", "engine": "transformers", "base_url": "http://127.0.0.1:9", "models": [model]}
    registered = tenant.client.post("/v1/nodes/register", headers=node_auth, json=report)
    assert registered.status_code == 200, registered.text
    for _ in range(3):
        beat = tenant.client.post(f"/v1/nodes/{node_id}/heartbeat", headers=node_auth, json={"state": "healthy"})
        assert beat.status_code == 200, beat.text
    tenant.post("/v1/apps", json={"name": "audited"})
    actions = [e["action"] for e in operator.get("/v1/operator/audit").json()["items"]]
    assert {"POST /v1/apps", "POST /v1/nodes", "POST /v1/nodes/register"} <= set(actions)
    assert not [a for a in actions if "completions" in a or "heartbeat" in a]


def test_the_retention_sweep_removes_events_past_the_retention_period_only(tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from control.bootstrap import bootstrap
    from control.settings import Settings
    from control.store import migrate
    from control.store.models import AuditEventRow

    services = bootstrap(Settings(data_dir=tmp_path, audit_retention_s=3600))
    migrate.upgrade(services.db.engine)
    try:
        old = services.audit.record(
            tenant_id=None, api_key_id=None, action="POST /v1/apps", target="/v1/apps", request_id="r1", outcome=201
        )
        new = services.audit.record(
            tenant_id=None, api_key_id=None, action="POST /v1/apps", target="/v1/apps", request_id="r2", outcome=201
        )
        with services.db.write() as session:
            session.execute(
                update(AuditEventRow).where(AuditEventRow.id == old.id).values(created_at=datetime.now(UTC) - timedelta(hours=2))
            )
        assert services.retention.sweep()["audit_events"] == 1
        assert [e.id for e in services.audit.list(tenant_id=None).items] == [new.id]
        keep_all = bootstrap(Settings(data_dir=tmp_path, audit_retention_s=0))
        assert keep_all.retention.audit_for is None and keep_all.retention.sweep()["audit_events"] == 0
        keep_all.db.dispose()
    finally:
        services.db.dispose()
