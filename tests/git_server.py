"""A real git server on loopback for tests: ``git http-backend`` (git's own smart-HTTP
CGI) behind a tiny stdlib HTTP server, serving bare repositories made from a dict of files."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

GIT = ["git", "-c", "user.name=moorage-test", "-c", "user.email=test@moorage.invalid", "-c", "init.defaultBranch=main"]


def make_repo(root: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository ``root/name.git`` whose ``main`` holds ``files``."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    for cmd in (["init", "-q", str(work)], ["-C", str(work), "add", "-A"], ["-C", str(work), "commit", "-qm", "app"]):
        subprocess.run([*GIT, *cmd], check=True, capture_output=True)
    bare = root / f"{name}.git"
    subprocess.run([*GIT, "clone", "-q", "--bare", str(work), str(bare)], check=True, capture_output=True)
    return bare


def _handler(project_root: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _cgi(self) -> None:
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                "GIT_PROJECT_ROOT": str(project_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "REQUEST_METHOD": self.command,
                "REMOTE_ADDR": "127.0.0.1",
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "PATH": "/usr/bin:/bin",
            }
            done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _cgi

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def git_http_server(project_root: Path) -> Iterator[int]:
    """Serve ``project_root``'s repositories on 127.0.0.1; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(project_root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
