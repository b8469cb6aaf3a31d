"""Traefik static configuration and a small process runner.

The static config is generated here (not templated in shell) so deploy/host-setup.sh, the
tests and the benches all run Traefik with the *same* configuration: a file provider that
watches a directory moorage owns, one HTTP entrypoint, and no API/dashboard at all. The
only other listener is the `ping` health endpoint, bound to loopback.

    python -m runtime.traefik --http-address :80 --dynamic-dir DIR > traefik.yml
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Traefik applies a provider event at once, then ignores newer ones for this long (its own
# default is 2s). Route files are renamed into place in one event each (runtime.router), so
# this delays only a route that lands right after another reload, as in a burst of deploys.
# Not lower: with 100ms, rewriting one route every 20 ms under load (tests/runtime/
# test_route_atomicity.py) drew 502s from Traefik's reloads, with 500ms none.
DEFAULT_THROTTLE = "500ms"
WEB_ENTRYPOINT = "web"
WEBSECURE_ENTRYPOINT = "websecure"
PING_ENTRYPOINT = "ping"


@dataclass(frozen=True)
class TraefikStaticOptions:
    dynamic_dir: Path
    http_address: str = ":80"
    # Loopback only: the ping endpoint is the one non-ingress listener Traefik gets.
    ping_address: str = "127.0.0.1:8082"
    throttle: str = DEFAULT_THROTTLE
    log_level: str = "INFO"
    # Production TLS: set an ACME e-mail to add a :443 entrypoint + resolver `acme_resolver`.
    acme_email: str | None = None
    acme_storage: Path | None = None
    https_address: str = ":443"
    acme_resolver: str = "letsencrypt"
    acme_ca_server: str | None = None  # the ACME directory URL; None: Let's Encrypt production
    acme_tls_challenge: bool = False  # TLS-ALPN-01 instead of HTTP-01 (where only :443 is open)
    extra: dict[str, Any] = field(default_factory=dict)


def static_config(opts: TraefikStaticOptions) -> dict[str, Any]:
    """Build the static config as a dict (rendered to YAML by `render_static_config`)."""
    # Drop request headers whose names alias another (X_Auth_User for X-Auth-User): WSGI/CGI
    # backends would read them as the header Traefik manages (Traefik security advisory).
    ingress_http = {"aliasHeadersStrategy": "delete"}
    entrypoints: dict[str, Any] = {
        WEB_ENTRYPOINT: {"address": opts.http_address, "http": dict(ingress_http)},
        PING_ENTRYPOINT: {"address": opts.ping_address},
    }
    cfg: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        # JSON lines: what moorage reads back (runtime.certificates.acme_errors) parses them.
        "log": {"level": opts.log_level, "noColor": True, "format": "json"},
        "entryPoints": entrypoints,
        "providers": {
            "providersThrottleDuration": opts.throttle,
            "file": {"directory": str(opts.dynamic_dir), "watch": True},
        },
        "ping": {"entryPoint": PING_ENTRYPOINT},
        # No `api` key: the API and dashboard are disabled, never exposed (DESIGN pitfalls).
    }
    if opts.acme_email:
        entrypoints[WEBSECURE_ENTRYPOINT] = {"address": opts.https_address, "http": dict(ingress_http)}
        storage = opts.acme_storage or opts.dynamic_dir.parent / "acme.json"
        acme: dict[str, Any] = {"email": opts.acme_email, "storage": str(storage)}
        if opts.acme_tls_challenge:
            acme["tlsChallenge"] = {}
        else:
            acme["httpChallenge"] = {"entryPoint": WEB_ENTRYPOINT}
        if opts.acme_ca_server:
            acme["caServer"] = opts.acme_ca_server
        cfg["certificatesResolvers"] = {opts.acme_resolver: {"acme": acme}}
    cfg.update(opts.extra)
    return cfg


def render_static_config(opts: TraefikStaticOptions) -> str:
    return yaml.safe_dump(static_config(opts), sort_keys=True)


def ping(ping_address: str, timeout: float = 1.0) -> bool:
    """True when Traefik's loopback ping endpoint answers OK."""
    import httpx  # lazy: host-setup renders configs with only pyyaml installed

    host, _, port = ping_address.rpartition(":")
    try:
        r = httpx.get(f"http://{host or '127.0.0.1'}:{port}/ping", timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_traefik_binary() -> str:
    """`traefik` on PATH, else the tools venv host-setup.sh installs."""
    found = shutil.which("traefik") or "/opt/moorage/tools/bin/traefik"
    if not os.access(found, os.X_OK):
        raise FileNotFoundError("traefik binary not found: run `bash deploy/host-setup.sh` as root")
    return found


class TraefikProcess:
    """A Traefik child process on loopback ports with its own dynamic dir (tests, benches, dev)."""

    def __init__(
        self,
        dynamic_dir: Path | None = None,
        throttle: str = DEFAULT_THROTTLE,
        *,
        acme_email: str | None = None,
        acme_ca_server: str | None = None,
        acme_storage: Path | None = None,
        acme_ca_bundle: Path | None = None,
    ) -> None:
        """With ``acme_email``: an HTTPS entrypoint too, and the ACME resolver ``opts.acme_resolver``
        against ``acme_ca_server`` (whose TLS root ``acme_ca_bundle`` is), storing in ``acme_storage``."""
        self._tmp = tempfile.mkdtemp(prefix="moorage-traefik-")
        self.dynamic_dir = dynamic_dir or Path(self._tmp) / "dynamic"
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_loopback_port()
        self.https_port = free_loopback_port()
        self.opts = TraefikStaticOptions(
            dynamic_dir=self.dynamic_dir,
            http_address=f"127.0.0.1:{self.http_port}",
            ping_address=f"127.0.0.1:{free_loopback_port()}",
            throttle=throttle,
            acme_email=acme_email,
            acme_ca_server=acme_ca_server,
            acme_storage=acme_storage,
            https_address=f"127.0.0.1:{self.https_port}",
        )
        self.env = {**os.environ, **({"LEGO_CA_CERTIFICATES": str(acme_ca_bundle)} if acme_ca_bundle else {})}
        self.config_path = Path(self._tmp) / "traefik.yml"
        self.log_path = Path(self._tmp) / "traefik.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> TraefikProcess:
        self.config_path.write_text(render_static_config(self.opts))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [find_traefik_binary(), f"--configFile={self.config_path}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"traefik exited early:\n{self.log_path.read_text()[-2000:]}")
            if ping(self.opts.ping_address):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"traefik did not answer ping within {timeout}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def crash(self) -> None:
        """SIGKILL Traefik and keep its files, as a crash would; ``start()`` brings it back on
        the same ports (fault tests)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> TraefikProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render moorage's Traefik static config (YAML).")
    p.add_argument("--dynamic-dir", required=True, type=Path)
    p.add_argument("--http-address", default=":80")
    p.add_argument("--ping-address", default="127.0.0.1:8082")
    p.add_argument("--throttle", default=DEFAULT_THROTTLE)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--acme-email", default=None)
    p.add_argument("--acme-storage", default=None, type=Path)
    p.add_argument("--https-address", default=":443")
    p.add_argument("--acme-ca-server", default=None, help="ACME directory URL (default: Let's Encrypt production)")
    p.add_argument("--acme-challenge", default="http", choices=["http", "tls"], help="HTTP-01 on :80 or TLS-ALPN-01 on :443")
    a = p.parse_args(argv)
    opts = TraefikStaticOptions(
        dynamic_dir=a.dynamic_dir,
        http_address=a.http_address,
        ping_address=a.ping_address,
        throttle=a.throttle,
        log_level=a.log_level,
        acme_email=a.acme_email or None,
        acme_storage=a.acme_storage,
        https_address=a.https_address,
        acme_ca_server=a.acme_ca_server or None,
        acme_tls_challenge=a.acme_challenge == "tls",
    )
    sys.stdout.write(render_static_config(opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
