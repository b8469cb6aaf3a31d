"""A stateful app keeps its data, against the real engine, runsc, loop devices and Traefik: a
small notes app (it appends each POST to a file on its volume and answers GET with the file)
keeps its notes across a redeploy, a rollback, a container killed and restarted by the
reconciler, and a control-plane restart during which its container was removed and its loop
device detached (as a host reboot leaves it). Its volume's size is enforced inside the
container (ENOSPC); a volume over the tenant's quota is refused with nothing made; a volume
in use is deleted only with ?force=true; an app with volumes only with ?purge=true, and
then nothing of them is left on the host."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from litestar.testing import TestClient

from control.app import create_app
from control.settings import Settings
from runtime.traefik import TraefikProcess
from runtime.volumes import LoopImages
from tests.conftest import Caller
from tests.e2e.apps import BASE, tar_gz
from tests.e2e.conftest import Platform, cleanup_tenant, e2e_settings
from tests.runtime.helpers import RUN_ID

pytestmark = pytest.mark.docker
TENANT = f"vol-{RUN_ID}"
SIZE_MB = 16

NOTES_APP = """\
import errno, http.server, os
VERSION = "{version}"
NOTES = "/data/notes.txt"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, "ok\\n")
        try:
            with open(NOTES) as f:
                notes = f.read()
        except FileNotFoundError:
            notes = ""
        self.answer(200, f"version={{VERSION}}\\n{{notes}}")
    def do_POST(self):
        text = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path == "/fill":
            return self.answer(200, fill())
        with open(NOTES, "a") as f:
            f.write(text + "\\n")
        self.answer(201, "saved\\n")
    def log_message(self, fmt, *args):
        pass
def fill():
    written, path = 0, "/data/fill"
    try:
        with open(path, "wb") as f:
            while written < 256 * 2**20:
                f.write(b"\\0" * 2**20)
                f.flush()
                os.fsync(f.fileno())
                written += 2**20
        outcome = "no error"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc.errno))
    os.remove(path)
    return f"{{outcome}} after {{written // 2**20}} MiB\\n"
print(f"notes {{VERSION}} on port {{os.environ['PORT']}}", flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""


def notes_source(version: str) -> bytes:
    dockerfile = f'FROM {BASE}\nWORKDIR /app\nCOPY app.py /app/app.py\nCMD ["python3", "-u", "/app/app.py"]\n'
    return tar_gz({"app.py": NOTES_APP.format(version=version), "Dockerfile": dockerfile})


class ControlPlane:
    """The control plane on one data dir, stopped and started again like a process would be."""

    def __init__(self, settings: Settings, traefik: TraefikProcess) -> None:
        self.settings, self.traefik = settings, traefik
        self._stack: ExitStack | None = None
        self.platform: Platform | None = None
        self.operator: Caller | None = None
        self._tokens: tuple[str, str, str, str] | None = None

    def start(self) -> Platform:
        app = create_app(self.settings)
        self._stack = ExitStack()
        client = self._stack.enter_context(TestClient(app, raise_server_exceptions=False, timeout=120))
        if self._tokens is None:
            operator = Caller(client, app.state.services.keys.bootstrap_operator("e2e").token)
            tenant = operator.post("/v1/tenants", json={"name": TENANT}).json()
            key = operator.post(f"/v1/tenants/{tenant['id']}/keys", json={"scopes": ["admin"], "name": "e2e"}).json()
            self._tokens = (operator.token, key["token"], key["id"], tenant["id"])
        operator_token, token, key_id, tenant_id = self._tokens
        self.operator = Caller(client, operator_token)
        self.platform = Platform(app, client, Caller(client, token, key_id, tenant_id), TENANT, self.traefik)
        return self.platform

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()  # the app's shutdown: workers, reconciler, teardowns drained
            self._stack = None


@pytest.fixture(scope="module")
def plane(traefik: TraefikProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    data_dir = tmp_path_factory.mktemp("volumes-e2e")
    control = ControlPlane(e2e_settings(data_dir, traefik, volume_quota="enforced"), traefik)
    control.start()
    try:
        yield control
    finally:
        control.stop()
        cleanup_tenant(TENANT)
        loops = LoopImages(data_dir / "volumes")
        for volume_id in loops.owned():
            loops.remove(volume_id)


def _until(what: str, done: Callable[[], bool], timeout: float = 30) -> float:
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, f"never: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def _notes(platform: Platform) -> str:
    r = platform.get("notes", timeout=5)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    return r.text


def _serves(platform: Platform, *needles: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            r = platform.get("notes", timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and all(n in r.text for n in needles)

    return check


@contextlib.contextmanager
def _gap_watch(platform: Platform) -> Iterator[list[float]]:
    """The longest stretch in which the app did not answer 200 (the stop-then-start gap)."""
    longest, stop = [0.0], threading.Event()

    def watch() -> None:
        down_since = None
        while not stop.is_set():
            asked = time.monotonic()  # a request to a stopped container may hang: count from when it was sent
            if _serves(platform)():
                if down_since is not None:
                    longest[0] = max(longest[0], asked - down_since)
                down_since = None
            elif down_since is None:
                down_since = asked
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield longest
    finally:
        time.sleep(0.5)  # the new release's first answers end the gap
        stop.set()
        watcher.join()


def _post_note(platform: Platform, text: str) -> None:
    r = httpx.post(platform.traefik.url + "/", headers={"Host": platform.host("notes")}, content=text, timeout=5)
    assert r.status_code == 201, f"{r.status_code} {r.text}"


def _deploy(platform: Platform, version: str) -> dict[str, Any]:
    body = platform.wait("notes", platform.deploy("notes", notes_source(version)), timeout=120)
    assert body["status"] == "running", body
    return body


def _container(tenant: str = TENANT, app: str = "notes") -> docker.models.containers.Container:
    client = docker.from_env()
    [found] = client.containers.list(filters={"label": [f"moorage.tenant={tenant}", f"moorage.app={app}"]})
    return found


def _loop_devices(image: Path) -> list[str]:
    listed = subprocess.run(["losetup", "--json", "-l", "-O", "NAME,BACK-FILE"], capture_output=True, text=True, check=True)
    devices = json.loads(listed.stdout or "{}").get("loopdevices", [])
    return [d["name"] for d in devices if str(d.get("back-file", "")).removesuffix(" (deleted)") == str(image)]


def _docker_volumes(tenant: str = TENANT) -> list[str]:
    return [v.name for v in docker.from_env().volumes.list(filters={"label": f"moorage.tenant={tenant}"})]


def test_a_stateful_app_keeps_its_data_and_its_volume_is_bounded(plane: ControlPlane) -> None:
    started = time.monotonic()
    platform, operator = plane.platform, plane.operator
    assert platform is not None and operator is not None
    tenant, volumes_dir = platform.tenant, plane.settings.data_dir / "volumes"
    assert tenant.post("/v1/apps", json={"name": "notes", "port": 8080, "health_check_path": "/healthz"}).status_code == 201

    # Over the tenant's storage quota: a problem answer, and nothing made anywhere.
    limits = f"/v1/tenants/{tenant.tenant_id}/storage-limits"
    assert operator.request("PUT", limits, json={"max_total_mb": SIZE_MB - 1}).status_code == 200
    over = tenant.post("/v1/apps/notes/volumes", json={"name": "data", "mount_path": "/data", "size_mb": SIZE_MB})
    assert over.status_code == 422 and over.json()["code"] == "quota-exceeded", over.text
    assert over.headers["content-type"].startswith("application/problem+json")
    assert not list(volumes_dir.glob("*.img")) and _docker_volumes() == []
    assert not any(TENANT in str(p) for p in volumes_dir.glob("*"))
    assert operator.request("PUT", limits, json={}).status_code == 200

    made = tenant.post("/v1/apps/notes/volumes", json={"name": "data", "mount_path": "/data", "size_mb": SIZE_MB})
    assert made.status_code == 201, made.text
    volume = made.json()
    assert volume["quota"] == "enforced"
    image = volumes_dir / f"{volume['id']}.img"
    assert image.stat().st_mode & 0o777 == 0o600 and _loop_devices(image)
    assert _docker_volumes() == [f"moorage-vol-{volume['id']}"]

    _deploy(platform, f"a-{RUN_ID}")
    _post_note(platform, "one")
    assert "one" in _notes(platform)

    with _gap_watch(platform) as gap:
        _deploy(platform, f"b-{RUN_ID}")  # a redeploy: stop, then start, on the same volume
    assert f"version=b-{RUN_ID}" in _notes(platform) and "one" in _notes(platform)
    assert 0 < gap[0] < 15, gap  # there is a gap (one writer at a time), and it is short
    _post_note(platform, "two")

    rollback = tenant.post("/v1/apps/notes/rollback", json={"release": "v1"})
    assert rollback.status_code == 202, rollback.text
    assert platform.wait("notes", rollback.json()["id"])["status"] == "running"
    assert f"version=a-{RUN_ID}" in _notes(platform) and "one\ntwo\n" in _notes(platform)

    _container().kill()  # the reconciler (every 2 s) starts it again, volume and all
    restarted_s = _until("the killed container serves again", _serves(platform, "one\ntwo\n"))

    # A control-plane restart during which the container went and the loop device was
    # detached (as a reboot leaves a host): the new process's reconciler brings both back.
    plane.stop()
    _container().remove(force=True)
    for device in _loop_devices(image):
        subprocess.run(["losetup", "-d", device], check=True)
    assert _loop_devices(image) == []
    platform = plane.start()
    recreated_s = _until("the recreated container serves", _serves(platform, "one\ntwo\n"))
    assert _loop_devices(image)
    _post_note(platform, "three")

    filled = httpx.post(platform.traefik.url + "/fill", headers={"Host": platform.host("notes")}, timeout=30)
    assert filled.status_code == 200 and filled.text.startswith("ENOSPC after"), filled.text
    assert int(filled.text.split()[2]) < SIZE_MB
    assert "one\ntwo\nthree\n" in _notes(platform)
    measured = f"/v1/apps/notes/volumes/{volume['id']}"
    _until("the reconciler measures the volume", lambda: platform.tenant.get(measured).json()["used_mb"] is not None)
    used = platform.tenant.get(measured).json()
    assert 0 <= used["used_mb"] < SIZE_MB and used["status"] == "ready" and used["measured_at"]
    print(
        f"\nvolumes e2e: a redeploy's gap {gap[0]:.1f}s, killed container back in {restarted_s:.1f}s, recreated after the restart in {recreated_s:.1f}s, "
        f"{filled.text.strip()}, {time.monotonic() - started:.1f}s in all"
    )


def _run(platform: Platform, command: list[str], **body: str) -> tuple[dict[str, Any], str]:
    r = platform.tenant.post("/v1/apps/notes/runs", json={"command": command, **body})
    assert r.status_code == 202, r.text
    path = f"/v1/apps/notes/runs/{r.json()['id']}"
    _until("the run ends", lambda: platform.tenant.get(path).json()["status"] not in ("queued", "running"), timeout=90)
    return platform.tenant.get(path).json(), platform.tenant.get(path + "/logs").text


def test_a_run_reads_the_apps_volume_and_writes_it_only_when_asked(plane: ControlPlane) -> None:
    platform = plane.platform
    assert platform is not None
    done, output = _run(platform, ["cat", "/data/notes.txt"])  # read-only by default
    assert (done["status"], done["exit_code"], done["volume_access"]) == ("succeeded", 0, "read-only"), done
    assert "one\ntwo\nthree\n" in output
    refused, output = _run(platform, ["sh", "-c", "echo from-a-run >> /data/notes.txt"])
    assert refused["status"] == "failed" and refused["exit_code"] != 0 and "Read-only file system" in output, output
    written, _ = _run(platform, ["sh", "-c", "echo from-a-run >> /data/notes.txt"], volume_access="read-write")
    assert written["status"] == "succeeded", written
    assert "three\nfrom-a-run\n" in _notes(platform)  # the app reads what the run wrote
    unmounted, output = _run(platform, ["ls", "/data"], volume_access="none")
    assert unmounted["exit_code"] != 0 or "notes.txt" not in output


def test_a_mounted_volume_goes_only_with_force_and_an_app_with_volumes_only_with_purge(plane: ControlPlane) -> None:
    platform = plane.platform
    assert platform is not None
    tenant, volumes_dir = platform.tenant, plane.settings.data_dir / "volumes"
    [data] = tenant.get("/v1/apps/notes/volumes").json()["items"]
    image = volumes_dir / f"{data['id']}.img"

    mounted = tenant.delete("/v1/apps/notes/volumes/data")
    assert mounted.status_code == 409 and mounted.json()["code"] == "volume-mounted", mounted.text
    assert "?force=true" in mounted.json()["detail"] and image.exists()
    assert tenant.delete("/v1/apps/notes/volumes/data?force=true").status_code == 204
    assert not image.exists() and _loop_devices(image) == [] and _docker_volumes() == []
    _until("the app is started again without the volume", _serves(platform, "version="))

    cache = tenant.post("/v1/apps/notes/volumes", json={"name": "cache", "mount_path": "/cache", "size_mb": 4}).json()
    cache_image = volumes_dir / f"{cache['id']}.img"
    refused = tenant.delete("/v1/apps/notes")
    assert refused.status_code == 409 and refused.json()["code"] == "app-has-volumes", refused.text
    assert tenant.delete("/v1/apps/notes?purge=true").status_code == 204
    gone_s = _until("the purged app's volume is gone", lambda: not cache_image.exists() and _docker_volumes() == [], timeout=15)
    assert _loop_devices(cache_image) == []
    print(f"\npurged with the app: volume gone {gone_s:.1f}s after the 204")
