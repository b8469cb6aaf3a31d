"""One engine process: launched in its own process group (vLLM forks workers), its
output streamed line by line to our log, signalled and reaped as a group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterable

import structlog

from inference.engine.commands import EngineCommand, engine_environment

TAIL_LINES = 40


class EngineProcess:
    def __init__(self, command: EngineCommand, *, redact: Iterable[str] = ()) -> None:
        self.command = command
        self._redact = [value for value in redact if value]
        self._log = structlog.get_logger("inference.engine").bind(source=f"engine:{command.engine}")
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # for failure reports
        self._popen = subprocess.Popen(
            command.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=engine_environment(command),
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # own process group: signal the engine and its workers together
        )
        self._pump = threading.Thread(target=self._stream_output, name="engine-output", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float) -> int:
        """SIGTERM the group (engines shut down gracefully on it), SIGKILL after `timeout`."""
        if self.poll() is None:
            self._signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self._log.warning("engine_kill", pid=self.pid, after_s=timeout)
                self._signal(signal.SIGKILL)
        code = self._popen.wait()
        self._pump.join(timeout=5)
        return code

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def _stream_output(self) -> None:
        assert self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.rstrip()
            for secret in self._redact:
                line = line.replace(secret, "[redacted]")
            if line:
                self.tail.append(line)
                self._log.info("engine_output", line=line)
