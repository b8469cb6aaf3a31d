"""A third-party-style Flask app whose Dockerfile runs ``pip install flask gunicorn``, built
through the real pipeline (dockerd's classic builder, FROM the local python base image) and
served by gunicorn through Traefik. HTTPS here goes through a TLS-intercepting proxy whose
CA only the host trusts, so the install works only because the build trusts the operator's
bundle (``MOORAGE_BUILD_CA_BUNDLE``, the host's bundle in ``e2e_settings``); the running app
trusts it too (``/tls`` fetches from PyPI at runtime). Nothing of key material is in the
image: its history is searched, and so is its whole filesystem, against the base image's
(Debian's libgnutls carries the FIPS self-test keys: the build must add none to them)."""

from __future__ import annotations

import hashlib
import re
import tarfile

import docker
import httpx
import pytest

from runtime.ca_bundle import ENV_NAMES, TARGET
from tests.e2e.apps import BASE, tar_gz
from tests.e2e.conftest import HOST_CA_BUNDLE, Platform
from tests.runtime.helpers import RUN_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]

APP = f"""\
import os, urllib.request
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return "flask {RUN_ID} served by gunicorn\\n"


@app.get("/tls")
def tls():
    with urllib.request.urlopen("https://pypi.org/simple/gunicorn/", timeout=30) as answer:
        return f"pypi {{answer.status}} trusting {{os.environ.get('SSL_CERT_FILE')}}\\n"
"""

DOCKERFILE = f"""\
FROM {BASE}
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir flask gunicorn
WORKDIR /app
COPY app.py /app/app.py
EXPOSE 8080
CMD ["/venv/bin/gunicorn", "--bind", "0.0.0.0:8080", "--workers", "2", "app:app"]
"""

KEY_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\s*\n[A-Za-z0-9+/=]{16}")
CERT_BLOCK = b"-----BEGIN CERTIFICATE-----"


def _scan_filesystem(image: str) -> tuple[dict[str, str], list[str]]:
    """({file: sha256} of the files holding a private key block, files holding a
    certificate) of ``image``'s whole filesystem, read from ``docker export`` of a container
    never started."""
    client = docker.from_env(timeout=300)
    container = client.containers.create(image, command=["true"])
    keys: dict[str, str] = {}
    certs: list[str] = []
    try:
        raw = container.export()
        with tarfile.open(fileobj=_Chunks(raw), mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                f = tar.extractfile(member)
                data = f.read() if f else b""
                if KEY_BLOCK.search(data):
                    keys[member.name] = hashlib.sha256(data).hexdigest()
                if CERT_BLOCK in data:
                    certs.append(member.name)
    finally:
        container.remove(force=True)
    return keys, certs


class _Chunks:
    """A file-like view of the export stream, so the tarball is never held whole."""

    def __init__(self, chunks) -> None:
        self.chunks = iter(chunks)
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                break
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


@pytest.mark.skipif(not HOST_CA_BUNDLE.is_file(), reason="needs the host's CA bundle")
def test_a_pip_installed_flask_app_builds_trusting_the_operator_ca_and_serves_with_gunicorn(platform: Platform) -> None:
    t = platform.tenant
    assert t.post("/v1/apps", json={"name": "flask", "port": 8080}).status_code == 201
    deployment = platform.deploy("flask", tar_gz({"Dockerfile": DOCKERFILE, "app.py": APP}))
    done = platform.wait("flask", deployment, timeout=600)
    log = t.get(f"/v1/apps/flask/deployments/{deployment}/logs").text
    assert done["status"] == "running", (done, log[-4000:])
    assert "Successfully installed" in log and "gunicorn" in log

    served = platform.get("flask", timeout=10)
    assert served.status_code == 200 and served.text == f"flask {RUN_ID} served by gunicorn\n"
    assert served.headers["server"].startswith("gunicorn")
    runtime_tls = httpx.get(platform.traefik.url + "/tls", headers={"Host": platform.host("flask")}, timeout=60)
    assert runtime_tls.text == f"pypi 200 trusting {TARGET}\n", runtime_tls.text

    image = done["image"]
    api = docker.from_env().api
    config_env = api.inspect_image(image)["Config"]["Env"] or []
    assert not [e for e in config_env if e.split("=", 1)[0] in ENV_NAMES]  # build-time only: the image's env is the Dockerfile's
    history = " ".join(str(layer.get("CreatedBy", "")) for layer in api.history(image))
    assert "PRIVATE KEY" not in history and f"SSL_CERT_FILE={TARGET}" in history
    keys, certs = _scan_filesystem(image)
    base_keys, _ = _scan_filesystem(BASE)
    assert keys == base_keys  # the build added no file with a key in it, and changed none
    assert TARGET.lstrip("/") in certs  # the scan sees the bundle the build copied: it reads what is there
