"""Health endpoints and the OpenAPI document the API is described by."""

from __future__ import annotations

import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import TestClient

from control.api.node_auth import NODE_ACCESS
from control.app import create_app
from control.security.scopes import ANY_KEY_ACCESS, OPERATOR_ACCESS, TENANT_SCOPES
from tests.live_server import free_port


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


def test_readyz_reports_an_unreachable_router_as_degraded(settings) -> None:
    port = free_port()  # nothing listens there: Traefik is down
    with TestClient(create_app(replace(settings, traefik_url=f"http://127.0.0.1:{port}"))) as client:
        down = client.get("/readyz")
        assert down.status_code == 200  # the API still serves; apps are unreachable meanwhile
        assert down.json()["status"] == "degraded"
        assert down.json()["checks"]["router"].startswith(f"unreachable: ConnectionRefusedError at 127.0.0.1:{port}")
        with socket.create_server(("127.0.0.1", port)):
            back = client.get("/readyz").json()
        assert back["checks"]["router"] == "ok" and back["status"] == "ready"


def test_readyz_reports_a_broken_database(app, client) -> None:
    db = app.state.services.db
    data_dir = Path(db.engine.url.database).parent
    db.dispose()
    shutil.rmtree(data_dir)
    data_dir.write_text("a file where the data directory was")  # SQLite can no longer open it
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failing")


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_openapi_31_documents_every_operation(spec: dict, app) -> None:
    assert spec["openapi"].startswith("3.1")
    assert "ApiKey" in spec["components"]["securitySchemes"]
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    for route in app.routes:
        if not route.path.startswith("/v1"):
            continue
        for method in route.methods - {"OPTIONS"}:
            path = route.path.replace(":str", "")
            assert (path, method) in documented, f"{method} {path} missing from OpenAPI"
            operation = spec["paths"][path][method.lower()]
            assert operation.get("summary"), f"{method} {path} has no summary"
            node_route = any(h.opt.get("access") == NODE_ACCESS for h in route.route_handlers)  # inference nodes
            assert operation.get("security") == [{"NodeToken" if node_route else "ApiKey": []}]
            for status in ("401", "403", "500"):
                content = operation["responses"][status]["content"]
                assert "application/problem+json" in content, f"{method} {path} {status}"


def test_every_v1_route_declares_who_may_call_it(app) -> None:
    allowed = {*TENANT_SCOPES, OPERATOR_ACCESS, ANY_KEY_ACCESS, NODE_ACCESS}
    for route in app.routes:
        if not route.path.startswith("/v1"):
            continue
        for handler in route.route_handlers:
            if "OPTIONS" in handler.http_methods and len(handler.http_methods) == 1:
                continue
            assert handler.opt.get("access") in allowed, f"{route.path} {handler.http_methods}"
