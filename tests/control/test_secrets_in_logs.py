"""No key material in any log line, or in any response after the one that created it."""

from __future__ import annotations

import io
import logging

from control.logging import attach_stream
from tests.conftest import Caller


def test_key_lifecycle_leaks_nothing(app, client) -> None:
    captured = io.StringIO()
    handler = attach_stream(captured)
    try:
        issued = app.state.services.keys.bootstrap_operator("op")
        operator = Caller(client, issued.token, issued.key.id)
        tenant_id = operator.post("/v1/tenants", json={"name": "leaky"}).json()["id"]
        created = operator.post(f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["admin"], "name": "agent"})
        token, key_id = created.json()["token"], created.json()["id"]
        secret = token.split("_", 4)[4]  # mrg_live_key_<id>_<secret>: the secret itself may hold "_"
        tenant = Caller(client, token, key_id)

        later = [
            tenant.get("/v1/whoami"),
            tenant.post("/v1/apps", json={"name": "web"}),
            tenant.get("/v1/apps"),
            tenant.post("/v1/apps", json={"name": "BAD NAME"}),
            tenant.get("/v1/keys"),
            tenant.get(f"/v1/keys/{key_id}"),
            operator.get(f"/v1/tenants/{tenant_id}/keys"),
            Caller(client, token[:-1] + ("A" if token[-1] != "A" else "B")).get("/v1/apps"),
            client.get("/v1/apps", params={"api_key": token}),  # a key misplaced in a query string
            operator.delete(f"/v1/tenants/{tenant_id}/keys/{key_id}"),
            tenant.get("/v1/apps"),
        ]
    finally:
        logging.getLogger().removeHandler(handler)

    logs = captured.getvalue()
    assert '"event": "request"' in logs and key_id in logs  # the log really was captured
    stored_hash = app.state.services.keys.get(tenant_id, key_id).secret_hash
    for needle in (token, secret, issued.token, issued.token.split("_", 4)[4], stored_hash):
        assert needle not in logs
        for response in later:
            assert needle not in response.text
            assert needle not in str(response.headers)
    assert later[-1].status_code == 401
