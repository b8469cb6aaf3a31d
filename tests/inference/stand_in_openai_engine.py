"""stand_in_openai_engine: a tiny HTTP process that plays an OpenAI-compatible engine for
gateway tests. It is NOT an inference engine: it answers chat/text completions with a
fixed, numbered text ("w0 w1 w2 ...") and honest-looking usage, so routing, failover,
quotas and stream relaying can be exercised against a real child process in milliseconds.
The real engine (`transformers serve`) is exercised end to end in test_gateway_e2e.py.

Streams look like `transformers serve`'s: usage on the last chunk next to finish_reason,
no `data: [DONE]` (``--openai-style``: a separate usage chunk only when asked, then [DONE]).

    python stand_in_openai_engine.py --port P [--name N] [--words 8] [--delay S]
        [--first-token-delay S] [--fail-status 500] [--die-after-chunks K] [--expect-model M]
        [--role-event] [--hang-after-chunks K --ready-file PATH]

``--hang-after-chunks K`` stops a stream after K content chunks (0: after the role event,
before any token), creates ``--ready-file`` and waits to be killed: a test kills the
process at exactly that point.

GET /last-request returns the last completion request body it received; GET /streams
how many streams it is still writing (a stream ends when it is done or its reader hangs up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="stand-in")
    parser.add_argument("--words", type=int, default=8, help="completion length when max_tokens allows")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before a stream's first chunk")
    parser.add_argument("--fail-status", type=int, help="answer every completion with this status")
    parser.add_argument("--die-after-chunks", type=int, help="exit the process mid-stream after K chunks")
    parser.add_argument("--expect-model", help="400 unless the request's model is exactly this")
    parser.add_argument("--openai-style", action="store_true", help="usage chunk only when asked, then [DONE]")
    parser.add_argument("--role-event", action="store_true", help="chat streams start with a role-only event, as vLLM's")
    parser.add_argument("--hang-after-chunks", type=int, help="after K content chunks, create --ready-file and hang")
    parser.add_argument("--ready-file", help="created once a stream hangs (--hang-after-chunks)")
    args = parser.parse_args()
    last: dict[str, Any] = {}
    streams = {"open": 0}
    streams_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # streams use chunked encoding, as uvicorn does

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/last-request":
                self._json(200, last)
            elif self.path == "/streams":
                with streams_lock:
                    self._json(200, streams)
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            last.clear()
            last.update(body)
            if args.fail_status:
                self._json(args.fail_status, {"error": {"message": f"{args.name} fails on purpose"}})
                return
            if args.expect_model and body.get("model") != args.expect_model:
                self._json(400, {"error": {"message": f"model must be {args.expect_model}"}})
                return
            chat = self.path == "/v1/chat/completions"
            text = json.dumps(body.get("messages") if chat else body.get("prompt"))
            prompt_tokens = max(1, len(text.split()))
            words = min(args.words, int(body.get("max_completion_tokens") or body.get("max_tokens") or 16))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": words, "total_tokens": prompt_tokens + words}
            if body.get("stream"):
                with streams_lock:
                    streams["open"] += 1
                try:
                    self._stream(chat, words, usage, body)
                finally:
                    with streams_lock:
                        streams["open"] -= 1
            else:
                content = " ".join(f"w{i}" for i in range(words)) + f" [{args.name}]"
                choice = {"index": 0, "finish_reason": "length" if words == args.words else "stop"}
                choice |= {"message": {"role": "assistant", "content": content}} if chat else {"text": content}
                self._json(200, {
                    "id": "cmpl-stand-in", "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model"), "choices": [choice], "usage": usage,
                })  # fmt: skip

        def _stream(self, chat: bool, words: int, usage: dict[str, int], body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            kind = "chat.completion.chunk" if chat else "text_completion"
            time.sleep(args.first_token_delay)  # a model still reading its prompt: headers out, no event yet

            def chunk(piece: str, finish: str | None = None, delta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
                choice |= {"delta": delta or ({"content": piece} if piece else {})} if chat else {"text": piece}
                return {"id": "chunk-stand-in", "object": kind, "created": 0, "model": body.get("model"),
                        "choices": [choice], **extra}  # fmt: skip

            def hang_if_due(sent: int) -> None:
                if args.hang_after_chunks == sent:
                    Path(args.ready_file).touch()  # what was written is flushed: the test may kill now
                    threading.Event().wait()

            if chat and args.role_event:
                self._event(chunk("", delta={"role": "assistant", "content": ""}))
            for i in range(words):
                hang_if_due(i)
                if args.die_after_chunks is not None and i >= args.die_after_chunks:
                    os._exit(9)  # like a SIGKILLed engine: the connection just drops
                self._event(chunk(f"w{i} "))
                time.sleep(args.delay)
            hang_if_due(words)
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if args.openai_style:
                self._event(chunk("", "length"))
                if wants_usage:
                    self._event(
                        {"id": "chunk-stand-in", "object": kind, "model": body.get("model"), "choices": [], "usage": usage}
                    )
                self._write(b"data: [DONE]\n\n")
            else:
                self._event(chunk("", "length", usage=usage))
            self.wfile.write(b"0\r\n\r\n")  # the end of the chunked body
            self.wfile.flush()

        def _event(self, payload: dict[str, Any]) -> None:
            self._write(b"data: " + json.dumps(payload).encode() + b"\n\n")

        def _write(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _json(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    print(f"stand-in OpenAI engine {args.name} listening on {args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
