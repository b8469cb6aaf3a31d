"""Source trees for the end-to-end tests: a tiny Python web app built FROM the local base
image (no registry), packed as the tar.gz the API takes."""

from __future__ import annotations

import io
import tarfile

BASE = "moorage/python:3-bookworm"

APP = """\
import http.server, os, sys
VERSION = "{version}"
{startup}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"version={{VERSION}} greeting={{os.environ.get('GREETING', '')}}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        pass
print(f"serving version {{VERSION}} on port {{os.environ['PORT']}}", flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""

DOCKERFILE = f"""\
FROM {BASE}
WORKDIR /app
{{extra}}COPY app.py /app/app.py
CMD ["python3", "-u", "/app/app.py"]
"""


def source(version: str, *, startup: str = "", extra_steps: str = "", dockerfile: bool = True) -> dict[str, str]:
    files = {"app.py": APP.format(version=version, startup=startup)}
    if dockerfile:
        files["Dockerfile"] = DOCKERFILE.format(extra=extra_steps)
    return files


def crashing(version: str) -> dict[str, str]:
    """Starts, says why it cannot run, exits: fails its health check."""
    return source(version, startup='print("fatal: DATABASE_URL is not set, cannot start", flush=True); sys.exit(3)')


def tar_gz(files: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: identical sources hit the cache
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()
