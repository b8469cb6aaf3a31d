"""Stopping and starting the host's real dockerd, the way deploy/host-setup.sh runs it
(systemd's docker.service when present, else the background daemon and its pidfile)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker

PIDFILE = Path("/var/run/docker.pid")
LOG = Path("/var/log/moorage/dockerd.log")


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def answers() -> bool:
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def live_restore() -> bool:
    client = docker.from_env()
    try:
        return bool(client.info().get("LiveRestoreEnabled"))
    finally:
        client.close()


def stop(timeout: float = 60) -> list[str]:
    """Stop dockerd (SIGTERM, as a restart or upgrade would); returns its argv to start it again."""
    if _systemd():
        subprocess.run(["systemctl", "stop", "docker.service", "docker.socket"], check=True, timeout=timeout)
        return []
    pid = int(PIDFILE.read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"dockerd (pid {pid}) did not stop within {timeout}s"
        time.sleep(0.05)
    return [a.decode() for a in argv]


def start(argv: list[str], timeout: float = 60) -> None:
    if _systemd():
        subprocess.run(["systemctl", "start", "docker.service"], check=True, timeout=timeout)
    else:
        with open(LOG, "ab") as log:
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not answers():
        assert time.monotonic() < deadline, f"dockerd did not answer within {timeout}s (see {LOG})"
        time.sleep(0.1)
