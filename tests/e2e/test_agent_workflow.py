"""An agent's session, using ONLY the CLI with ``--json`` (``main()``
in-process) against a real control plane on a socket, the real Docker engine + runsc and
the e2e Traefik: create an app, set a secret, deploy a source dir with ``--wait``, create
and link Postgres, redeploy, read logs, chat through the gateway, roll back.

The chat step is gateway-only: the node is the stand-in OpenAI engine
(tests/inference/stand_in_openai_engine.py, a stand-in, not an inference engine) enrolled
and registered as a node, to keep this test within a few minutes; the real tiny MoE behind
``moorage node run`` is covered by tests/inference/test_gateway_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from control.cli.main import main
from control.security.principal import Principal
from runtime.traefik import TraefikProcess
from tests.e2e.apps import BASE
from tests.e2e.conftest import cleanup_tenant, e2e_settings
from tests.inference.gateway_helpers import stand_in_engine
from tests.live_server import free_port, serving
from tests.runtime.helpers import RUN_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]

APP = """\
import http.server, os
VERSION = "{version}"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        db = "yes" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "no"
        body = f"version={{VERSION}} greeting={{os.environ.get('GREETING', '')}} db={{db}}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        pass
print(f"serving version {{VERSION}} on port {{os.environ['PORT']}}", flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""
DOCKERFILE = f'FROM {BASE}\nWORKDIR /app\nCOPY app.py /app/app.py\nCMD ["python3", "-u", "/app/app.py"]\n'


def write_source(root: Path, version: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP.format(version=version))
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "junk.pyc").write_bytes(b"\0" * 10)  # excluded from the upload
    return root


class Agent:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str, expect: int = 0) -> Any:
        code = main([*argv, "--json"])
        captured = self.capsys.readouterr()
        assert code == expect, f"moorage {' '.join(argv)} -> {code}\nstdout: {captured.out}\nstderr: {captured.err[-3000:]}"
        return json.loads(captured.out)


@pytest.fixture
def agent_env(traefik: TraefikProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    tenant_name = f"agent-{RUN_ID}"
    settings = e2e_settings(tmp_path / "data", traefik, port=free_port())
    try:
        with serving(settings) as (url, app):
            services = app.state.services
            tenant = services.tenants.create(tenant_name)
            operator = services.keys.bootstrap_operator("agent-op")
            issuer = Principal.of(operator.key.id, None, operator.key.scopes)
            key = services.keys.issue(issuer, tenant.id, name="agent", scopes=["admin", "inference"], expires_at=None)
            monkeypatch.setenv("MOORAGE_URL", url)
            monkeypatch.setenv("MOORAGE_API_KEY", key.token)
            monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
            yield {"url": url, "operator": operator.token, "traefik": traefik}
    finally:
        cleanup_tenant(tenant_name)


def through_traefik(traefik: TraefikProcess, app_url: str) -> str:
    response = httpx.get(traefik.url + "/", headers={"Host": urlsplit(app_url).hostname or ""}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_an_agent_ships_an_app_with_a_database_and_rolls_back(agent_env: dict[str, Any], tmp_path: Path, capsys) -> None:
    moorage, traefik = Agent(capsys), agent_env["traefik"]

    created = moorage("apps", "create", "shop", "--port", "8080")
    assert created["name"] == "shop" and created["url"].startswith("http://shop.agent-")
    env = moorage("env", "set", "shop", "GREETING=hello-agent")
    assert [v["name"] for v in env["vars"]] == ["GREETING"] and "hello-agent" not in json.dumps(env)

    first = moorage("deploy", str(write_source(tmp_path / "shop", "1")), "--app", "shop", "--wait")
    assert first["deployment"]["status"] == "running" and first["deployment"]["release"] == "v1"
    assert first["url"] == created["url"]
    assert through_traefik(traefik, first["url"]) == "version=1 greeting=hello-agent db=no\n"

    db = moorage("db", "create", "orders", "--engine", "postgres", "--wait")
    assert db["status"] == "available" and db["host"] == "db-orders"
    link = moorage("db", "link", "orders", "--app", "shop")
    assert link["env_name"] == "DATABASE_URL" and link["applies"] == "next-release"
    assert [d["name"] for d in moorage("db", "list")] == ["orders"]

    second = moorage("deploy", str(write_source(tmp_path / "shop", "2")), "--app", "shop", "--wait")
    assert second["deployment"]["status"] == "running" and second["deployment"]["release"] == "v2"
    assert through_traefik(traefik, second["url"]) == "version=2 greeting=hello-agent db=yes\n"

    status = moorage("status", "shop")
    assert status["release"]["name"] == "v2" and status["deployment"]["id"] == second["deployment"]["id"]
    runtime_log = moorage("logs", "shop", "--tail", "20")
    assert any("serving version 2" in line for line in runtime_log["lines"]) and runtime_log["truncated"] is False
    build_log = moorage("logs", "shop", "--deployment", second["deployment"]["id"])
    assert build_log["source"] == "build" and build_log["lines"]
    assert "hello-agent" not in json.dumps([runtime_log, build_log])  # the secret never shows

    with stand_in_engine() as engine:
        operator = {"Authorization": f"Bearer {agent_env['operator']}"}
        enrolled = httpx.post(agent_env["url"] + "/v1/nodes", json={"name": "agent-node"}, headers=operator, timeout=10).json()
        registered = httpx.post(agent_env["url"] + "/v1/nodes/register", timeout=10, headers={"Authorization": f"Bearer {enrolled['token']}"},
                                json={"state": "healthy", "engine": "transformers", "base_url": engine.base_url,
                                      "models": [{"name": "tiny", "engine_model": "stand-in"}]})  # fmt: skip
        assert registered.status_code == 200, registered.text
        assert [m["id"] for m in moorage("models")["data"]] == ["tiny"]
        answer = moorage("chat", "--model", "tiny", "say hi", "--max-tokens", "8")
        assert answer["choices"][0]["message"]["content"] and answer["usage"]["total_tokens"] > 0
        streamed = moorage("chat", "--model", "tiny", "say hi", "--stream")
        assert streamed["content"] and streamed["usage"]["total_tokens"] > 0
        assert moorage("usage")["totals"]["requests"] == 2

    assert [r["name"] for r in moorage("releases", "shop")] == ["v1", "v2"]
    back = moorage("rollback", "shop", "--release", "v1", "--wait")
    assert back["deployment"]["status"] == "running" and back["deployment"]["release"] == "v3"
    assert back["deployment"]["source"]["release"] == "v1" and back["deployment"]["source"]["config"].startswith("v1's: ")
    releases = moorage("releases", "shop")
    assert [(r["name"], r["current"], r["rollback_of"] is not None) for r in releases] == [
        ("v1", False, False),
        ("v2", False, False),
        ("v3", True, True),
    ]
    # v1's image, the current env (the link too: its URL is now in the environment)
    assert through_traefik(traefik, back["url"]).startswith("version=1 greeting=hello-agent")
