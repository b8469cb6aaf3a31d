"""A real ``moorage serve`` process (``python -m control.cli.main serve``) that a test can
SIGKILL and start again on the same data directory and port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime.traefik import TraefikProcess, free_loopback_port

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    def __init__(self, data_dir: Path, traefik: TraefikProcess | None, **settings: object) -> None:
        """``traefik=None``: a server that routes nothing (its route files go under the data dir)."""
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        defaults = {
            "DATA_DIR": data_dir,
            "PORT": self.port,
            "BASE_DOMAIN": "apps.test",
            "TRAEFIK_DYNAMIC_DIR": traefik.dynamic_dir if traefik else data_dir / "traefik",
            "TRAEFIK_URL": traefik.url if traefik else "http://127.0.0.1:9",
            "JOB_LEASE_S": 3,
            "RECONCILE_INTERVAL_S": 2,
            "HEALTH_TIMEOUT_S": 30,
            "SWAP_DRAIN_MS": 200,
        }
        overrides = {name.upper(): value for name, value in settings.items()}
        self.env = {**os.environ, **{f"MOORAGE_{k}": str(v) for k, v in (defaults | overrides).items()}}
        self.log = data_dir.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "control.cli.main", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def bootstrap(self) -> dict[str, str]:
        """The operator's Authorization header (``admin bootstrap`` before the first start)."""
        key_file = Path(self.env["MOORAGE_DATA_DIR"]).parent / "operator.key"
        self.cli("admin", "bootstrap", "--output-file", str(key_file))
        return {"Authorization": f"Bearer {key_file.read_text().strip()}"}

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control.cli.main", "serve"], env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed or recorded."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
