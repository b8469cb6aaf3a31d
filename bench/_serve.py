"""What the benches serve moorage with: `moorage serve` itself, in a process of its own.

A control plane in the bench's own process shares its interpreter (and GIL) with the
bench's client and helpers, which slows the path through moorage and nothing else: the
figures would blame moorage for the bench.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def moorage_env(data_dir: Path, port: int, **overrides: object) -> dict[str, str]:
    """What `moorage serve` reads; only what keeps a bench from measuring something else (job
    workers, the reconciler, rate limits sized for people) differs from the defaults."""
    env = {
        "MOORAGE_DATA_DIR": str(data_dir), "MOORAGE_PORT": str(port), "MOORAGE_BASE_DOMAIN": "apps.bench",
        "MOORAGE_JOB_WORKERS": "0", "MOORAGE_RECONCILE_INTERVAL_S": "0", "MOORAGE_DATABASE_PURGE_INTERVAL_S": "0",
        "MOORAGE_RATE_LIMIT_KEY_QUOTA": str(10**9), "MOORAGE_RATE_LIMIT_TENANT_QUOTA": str(10**9),
        "MOORAGE_TRAEFIK_DYNAMIC_DIR": str(data_dir / "traefik"),
    }  # fmt: skip
    return env | {f"MOORAGE_{name.upper()}": str(value) for name, value in overrides.items()}


def spawn(
    command: list[str], url: str, log_path: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start ``command`` (its output to ``log_path``, where a journal would take it) and wait
    until ``url``/healthz answers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                                     **(env or {})})  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{' '.join(command)} did not start: {log_path.read_text()[-2000:]}")


def start_moorage(data_dir: Path, port: int, log_path: Path, **overrides: object) -> subprocess.Popen[bytes]:
    """`moorage serve` on loopback ``port``, on the database in ``data_dir``."""
    command = [sys.executable, "-m", "control.cli.main", "serve"]
    return spawn(command, f"http://127.0.0.1:{port}", log_path, moorage_env(data_dir, port, **overrides))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux; 0 elsewhere): less
    sensitive than wall-clock figures to whatever else runs on the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
