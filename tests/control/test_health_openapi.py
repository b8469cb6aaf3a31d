"""Health endpoints and the OpenAPI document the API is described by."""

from __future__ import annotations

import re
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import TestClient

from control.api.auth import PUBLIC_PATHS
from control.api.node_auth import NODE_ACCESS
from control.app import create_app
from control.security.scopes import ANY_KEY_ACCESS, OPERATOR_ACCESS, TENANT_SCOPES, alternatives
from runtime.host_check import HostTargets, check_host
from runtime.traefik import TraefikProcess
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
        assert "router" in [p["component"] for p in down.json()["problems"]]
        with socket.create_server(("127.0.0.1", port)):
            back = client.get("/readyz").json()
        # Whether it is "ready" now depends on the rest of the host: test_readyz_is_ready_on_a_set_up_host.
        assert back["checks"]["router"] == "ok" and "router" not in [p["component"] for p in back["problems"]]


def test_readyz_reports_a_broken_database(app, client) -> None:
    db = app.state.services.db
    data_dir = Path(db.engine.url.database).parent
    # Background work (workers, schedulers, the metering sampler) first: a connection one of
    # them holds would go back to the pool after dispose() and answer the ping from its open file.
    app.state.services.stop()
    db.dispose()
    shutil.rmtree(data_dir)
    data_dir.write_text("a file where the data directory was")  # SQLite can no longer open it
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failing")
    assert response.json()["status"] == "not-ready"
    assert response.json()["problems"][0]["component"] == "database"


HOST_COMPONENTS = ["docker", "sandbox_runtime", "base_images", "router", "traefik_ping", "route_dir"]


def test_readyz_names_each_missing_host_component_and_what_to_do(settings, tmp_path: Path) -> None:
    """A bare host: no Docker engine, no Traefik, no route directory. The API still serves
    (200, degraded) and each missing piece is a problem that says how to get it."""
    bare = replace(
        settings,
        docker_url=f"unix://{tmp_path}/no-docker.sock",
        traefik_url=f"http://127.0.0.1:{free_port()}",
        traefik_ping_address=f"127.0.0.1:{free_port()}",
        traefik_dynamic_dir=tmp_path / "no-such-dir",
    )
    with TestClient(create_app(bare)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded" and body["checks"]["database"] == "ok"
    assert [p["component"] for p in body["problems"]] == HOST_COMPONENTS
    problems = {p["component"]: p for p in body["problems"]}
    assert body["checks"] == {
        "database": "ok",
        **{name: problems[name]["detail"] for name in HOST_COMPONENTS},
        "certificates": "ok",  # no custom domain: nothing can be expiring
    }
    assert problems["docker"]["detail"] == f"no Docker engine socket at {tmp_path}/no-docker.sock"
    assert problems["sandbox_runtime"]["detail"].startswith("not checked")  # cannot be known without the engine
    assert problems["traefik_ping"]["detail"].startswith(f"no answer at http://{bare.traefik_ping_address}/ping")
    assert problems["route_dir"]["detail"] == f"{tmp_path}/no-such-dir does not exist"
    for problem in body["problems"]:
        assert "deploy/host-setup.sh" in problem["remedy"], problem


@pytest.mark.docker
def test_readyz_names_a_missing_runtime_and_missing_images(settings) -> None:
    """The engine answers but lacks what deployments need: an unregistered sandbox runtime and
    a base image nobody built."""
    lacking = replace(settings, docker_runtime="no-such-runtime", build_allowed_images="moorage/never-built:1,moorage/any")
    with TestClient(create_app(lacking)) as client:
        body = client.get("/readyz").json()
    problems = {p["component"]: p for p in body["problems"]}
    assert body["checks"]["docker"] == "ok" and body["status"] == "degraded"
    assert problems["sandbox_runtime"]["detail"].startswith("dockerd has no runtime 'no-such-runtime' (registered: ")
    assert "runsc" in problems["sandbox_runtime"]["detail"]  # what host setup registers, so it is named
    # Only the missing one is named; a whole repository (no tag) names no image to look for.
    assert problems["base_images"]["detail"].startswith("missing: moorage/never-built:1 (")
    assert "host-setup.sh" in problems["base_images"]["remedy"]


@pytest.mark.docker
def test_the_host_check_names_a_daemon_whose_builds_would_not_be_sandboxed() -> None:
    """Build steps get dockerd's default runtime: host setup makes it runsc; a daemon whose
    default is another runtime than the one builds must get is named, with the fix."""
    findings = {f.component: f for f in check_host(HostTargets(build_runtime="runsc"))}
    assert findings["sandbox_runtime"].ok, findings["sandbox_runtime"]  # this host, set up
    other = {f.component: f for f in check_host(HostTargets(build_runtime="crun"))}["sandbox_runtime"]
    assert other.detail == "dockerd's default runtime is 'runsc': build steps (RUN) would run under it, not 'crun'"
    assert '"default-runtime": "crun"' in other.remedy and "host-setup.sh" in other.remedy


@pytest.mark.docker
def test_readyz_is_ready_on_a_set_up_host(settings) -> None:
    """dockerd with runsc and the base images (deploy/host-setup.sh), a real Traefik and a
    writable route directory: nothing to report."""
    with TraefikProcess() as traefik:
        at_traefik = replace(
            settings,
            traefik_url=traefik.url,
            traefik_ping_address=traefik.opts.ping_address,
            traefik_dynamic_dir=traefik.dynamic_dir,
        )
        with TestClient(create_app(at_traefik)) as client:
            ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["problems"] == [] and ready.json()["status"] == "ready"
    assert set(ready.json()["checks"].values()) == {"ok"}


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
            if any(h.opt.get("public") and h.opt.get("access") is None for h in route.route_handlers):
                # Registration and recovery: the credential is in the body, no security scheme applies.
                assert operation.get("security") in (None, []), f"{method} {path} is public"
                assert any(re.match(p, path) for p in PUBLIC_PATHS), f"{method} {path} is public but not in PUBLIC_PATHS"
                statuses: tuple[str, ...] = ("401", "429", "500")
            else:
                node_route = any(h.opt.get("access") == NODE_ACCESS for h in route.route_handlers)  # inference nodes
                assert operation.get("security") == [{"NodeToken" if node_route else "ApiKey": []}]
                statuses = ("401", "403", "500")
            for status in statuses:
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
            if handler.opt.get("public") and any(re.match(p, route.path) for p in PUBLIC_PATHS):
                continue  # registration and recovery: anyone, with the credential in the body
            access = handler.opt.get("access")
            assert access is not None, f"{route.path} {handler.http_methods}"
            assert set(alternatives(access)) <= allowed, f"{route.path} {handler.http_methods}: {access}"
