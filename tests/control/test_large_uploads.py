"""Keyed source uploads larger than the old 10 MiB in-memory buffer keep their
Idempotency-Key semantics, and the server's memory stays flat while it takes them.

The in-process tests check the semantics (replay, 422 for another body, 409 while the first
is in flight, nothing left in the spool). The acceptance test runs ``moorage serve`` as a
real process, uploads 50 MiB of incompressible data through the CLI's own client and a
TEST STAND-IN TCP proxy (not part of moorage) that cuts the first connection mid-body and
the second after the server answered (the answer is lost), and reads the server's peak RSS
from ``/proc``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from control.api.idempotency import SPOOL_DIR
from control.cli.main import main
from control.domain.idempotency import Claimed, fingerprint
from control.settings import Settings
from tests.conftest import Caller
from tests.fault.serve_process import ServeProcess

GZIP = {"Content-Type": "application/gzip"}
MiB = 1024 * 1024


def random_archive(size: int) -> bytes:
    """tar.gz of a Dockerfile and ``size`` random bytes: gzip cannot shrink them."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("Dockerfile", b"FROM moorage/busybox:latest\n"), ("blob.bin", os.urandom(size))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.fixture
def settings(tmp_path: Path, migrated_database: Path) -> Settings:
    import shutil

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(migrated_database, data_dir / "moorage.db")
    return Settings(data_dir=data_dir, base_domain="apps.test", job_workers=0, reconcile_interval_s=0)


def _deployments(tenant: Caller) -> list[str]:
    return [d["id"] for d in tenant.get("/v1/apps/web/deployments").json()["items"]]


def test_a_keyed_upload_past_10_mib_is_replayed_and_a_different_body_is_422(tenant: Caller, settings: Settings) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    archive = random_archive(12 * MiB)
    assert len(archive) > 12 * MiB
    key = {"Idempotency-Key": "big-1", **GZIP}
    first = tenant.post("/v1/apps/web/deployments", content=archive, headers=key)
    assert first.status_code == 202, first.text
    again = tenant.post("/v1/apps/web/deployments", content=archive, headers=key)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = archive[:-1] + bytes([archive[-1] ^ 1])  # one bit of the last byte differs
    reused = tenant.post("/v1/apps/web/deployments", content=other, headers=key)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency-key-reused"
    assert _deployments(tenant) == [first.json()["id"]]
    assert list((settings.data_dir / SPOOL_DIR).iterdir()) == []  # the spooled bodies are gone


def test_a_keyed_upload_past_10_mib_is_409_while_the_same_request_is_in_flight(app, tenant: Caller, settings: Settings) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    archive = random_archive(11 * MiB)
    path = "/v1/apps/web/deployments"
    claim = app.state.services.idempotency.claim(tenant.key_id, tenant.tenant_id, "big-2", fingerprint("POST", path, "", archive))
    assert isinstance(claim, Claimed)  # as if the first attempt were still running
    r = tenant.post(path, content=archive, headers={"Idempotency-Key": "big-2", **GZIP})
    assert r.status_code == 409 and r.json()["code"] == "idempotency-key-in-flight" and r.headers["retry-after"]
    assert _deployments(tenant) == []


def test_a_keyed_upload_over_the_upload_limit_is_413_with_the_limit(tenant: Caller, settings: Settings) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    too_big = b"\0" * (settings.max_upload_bytes + 1)
    r = tenant.post("/v1/apps/web/deployments", content=too_big, headers={"Idempotency-Key": "big-3", **GZIP})
    assert r.status_code == 413 and r.json()["code"] == "payload-too-large"
    assert f"at most {settings.max_upload_bytes} bytes" in r.json()["detail"]
    assert _deployments(tenant) == []


# -- the acceptance test: a real server process, cut connections, flat memory -----------------


@dataclass
class CuttingProxy:
    """TEST STAND-IN: a TCP relay to ``upstream``. Connection 1 is cut after ``cut_after``
    request bytes (mid-body); connection 2 relays the whole request and is cut as soon as
    the server starts answering (the answer is lost); later ones are relayed whole."""

    upstream: int
    cut_after: int
    connections: int = 0
    upstream_bytes: list[int] = field(default_factory=list)

    def start(self) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            client, _ = listener.accept()
            self.connections += 1
            threading.Thread(target=self._relay, args=(client, self.connections), daemon=True).start()

    def _relay(self, client: socket.socket, number: int) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream))
        sent = [0]

        def up() -> None:
            try:
                while data := client.recv(65536):
                    if number == 1 and sent[0] + len(data) >= self.cut_after:
                        server.sendall(data[: self.cut_after - sent[0]])
                        sent[0] = self.cut_after
                        break
                    server.sendall(data)
                    sent[0] += len(data)
            except OSError:
                pass
            finally:
                if number == 1:
                    _close(client, server)

        pump = threading.Thread(target=up, daemon=True)
        pump.start()
        try:
            while data := server.recv(65536):
                if number == 2:
                    break  # the server answered; the client never hears it
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)
            pump.join(timeout=30)
            self.upstream_bytes.append(sent[0])


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def _rss_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field_name} missing from /proc/{pid}/status")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "data", None, JOB_WORKERS=0, RECONCILE_INTERVAL_S=0, LOG_LEVEL="warning")
    try:
        yield process
    finally:
        process.kill()


@pytest.mark.slow
def test_a_50_mib_keyed_upload_cut_twice_deploys_once_in_flat_memory(
    server: ServeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = server.bootstrap()
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    tenant = httpx.post(server.url + "/v1/tenants", json={"name": "acme"}, headers=operator).json()
    token = httpx.post(f"{server.url}/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"]}, headers=operator).json()
    auth = {"Authorization": f"Bearer {token['token']}"}
    assert httpx.post(server.url + "/v1/apps", json={"name": "web"}, headers=auth).status_code == 201
    source = tmp_path / "web"
    source.mkdir()
    (source / "Dockerfile").write_text("FROM moorage/busybox:latest\n")
    (source / "blob.bin").write_bytes(os.urandom(50 * MiB))
    # Warm up every path the big upload takes (a keyed upload spooled to disk, extracted),
    # so the measurement sees what the body costs, not first-use imports and thread pools.
    warm = random_archive(2 * MiB)
    headers = {"Idempotency-Key": "warm-up", **GZIP, **auth}
    assert httpx.post(server.url + "/v1/apps/web/deployments", content=warm, headers=headers, timeout=60).status_code == 202
    baseline = _rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS

    proxy = CuttingProxy(server.port, cut_after=25 * MiB)
    monkeypatch.setenv("MOORAGE_URL", proxy.start())
    monkeypatch.setenv("MOORAGE_API_KEY", token["token"])
    monkeypatch.setenv("MOORAGE_CONFIG", "/nonexistent/profiles.toml")
    code = main(["deploy", str(source), "--app", "web", "--json", "--retry-for", "120"])
    out, err = capsys.readouterr()
    peak = _rss_kib(pid, "VmHWM")

    assert code == 0, err
    assert proxy.connections >= 3 and proxy.upstream_bytes[0] == 25 * MiB  # cut mid-body, then after the answer
    assert proxy.upstream_bytes[1] > 50 * MiB  # the whole request reached the server
    deployments = httpx.get(server.url + "/v1/apps/web/deployments", headers=auth).json()["items"]
    assert len(deployments) == 2  # the warm-up's and exactly one from the 50 MiB upload
    assert json.loads(out)["deployment"]["id"] == deployments[1]["id"]
    growth_mib = (peak - baseline) / 1024
    print(f"server RSS: baseline {baseline / 1024:.1f} MiB, peak during the 50 MiB upload {peak / 1024:.1f} MiB")
    assert growth_mib < 20, f"the server's peak RSS grew {growth_mib:.1f} MiB while taking a 50 MiB upload"
    assert list((tmp_path / "data" / SPOOL_DIR).iterdir()) == []
