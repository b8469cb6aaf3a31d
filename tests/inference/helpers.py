"""Helpers for inference tests: free loopback ports and stand-in engine commands."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from inference.engine.commands import EngineCommand

STAND_IN_ENGINE = Path(__file__).with_name("stand_in_engine.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stand_in_command(*flags: str, port: int | None = None, metrics: bool = False) -> EngineCommand:
    port = port or free_port()
    return EngineCommand(
        engine="transformers",
        argv=[sys.executable, str(STAND_IN_ENGINE), "--port", str(port), *flags],
        host="127.0.0.1",
        port=port,
        served_model_name="stand-in",
        metrics_path="/metrics" if metrics else None,
        env={"PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", "")},
    )
