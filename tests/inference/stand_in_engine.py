"""stand_in_engine: a tiny HTTP process that plays an engine for supervisor tests.

It is NOT an inference engine and tests no inference: it answers `/health` (and
`/metrics` in vLLM's format) so the supervisor's launch / health / crash / backoff /
drain logic can be exercised with a real child process in milliseconds. The real engine
is tested end to end in test_transformers_serve.py.

    python stand_in_engine.py --port P [--exit-after S] [--exit-code C] [--never-healthy]
        [--in-flight N] [--ignore-sigterm]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--exit-after", type=float, help="crash (exit) after this many seconds")
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--never-healthy", action="store_true")
    parser.add_argument("--in-flight", type=int, default=0, help="vllm:num_requests_running to report")
    parser.add_argument("--ignore-sigterm", action="store_true", help="needs SIGKILL to stop")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health" and not args.never_healthy:
                self._reply(200, b'{"status":"ok"}')
            elif self.path == "/metrics":
                self._reply(200, f'vllm:num_requests_running{{model_name="x"}} {args.in_flight}.0\n'.encode())
            else:
                self._reply(503, b"{}")

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.exit_after is not None:
        threading.Timer(args.exit_after, lambda: os._exit(args.exit_code)).start()
    print(f"stand-in engine listening on {args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
