"""Waiting on long operations: follow a deployment's build log (SSE) or poll a resource.

Progress goes to stderr when ``--json`` is set, so stdout stays one JSON document."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from control.cli.client import exit_codes
from control.cli.client.http import ApiClient
from control.cli.client.terminal import terminal_safe

DEPLOY_TERMINAL = frozenset({"running", "failed", "cancelled"})
JOB_TERMINAL = frozenset({"available", "failed", "succeeded", "deleted"})
POLL_S = 1.0


def progress_stream(as_json: bool) -> TextIO:
    return sys.stderr if as_json else sys.stdout


def follow_deployment(api: ApiClient, app: str, deployment_id: str, out: TextIO) -> dict[str, Any]:
    """Print build log lines and state transitions until the deployment ends; return it.

    The SSE stream ends with ``event: status``; if the connection drops before that, the
    deployment is polled instead (the build goes on server-side regardless)."""
    path = f"/v1/apps/{app}/deployments/{deployment_id}"
    try:
        with api.stream(f"{path}/logs", follow="true") as response:
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = line[5:].removeprefix(" ")
                    if event == "status":
                        print(terminal_safe(f"--> {json.loads(data).get('status')}"), file=out, flush=True)
                        break
                    print(terminal_safe(data), file=out, flush=True)
                elif not line:
                    event = "message"
    except Exception as exc:  # noqa: BLE001 - a broken stream is not a failed deploy: fall back to polling
        print(terminal_safe(f"moorage: log stream interrupted ({exc}); polling"), file=sys.stderr)
    return poll(lambda: api.get(path), DEPLOY_TERMINAL, out)


def poll(fetch: Callable[[], dict[str, Any]], terminal: frozenset[str], out: TextIO, timeout_s: float = 1800) -> dict[str, Any]:
    """Fetch until ``status`` is terminal, printing each new status once."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        body = fetch()
        if body["status"] != last:
            last = body["status"]
            print(terminal_safe(f"--> {last}"), file=out, flush=True)
        if last in terminal or time.monotonic() > deadline:
            return body
        time.sleep(POLL_S)


def exit_for(status: str) -> int:
    """``running``/``available``/``succeeded`` → 0; anything else after waiting → 1 (FAILED)."""
    return exit_codes.OK if status in {"running", "available", "succeeded"} else exit_codes.FAILED
