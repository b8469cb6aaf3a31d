"""``moorage chat`` and ``moorage usage``: the OpenAI-compatible inference gateway.

``chat --json``: the gateway's chat completion object unchanged (OpenAI shape). ``chat
--stream`` prints tokens to stdout as they arrive; with ``--stream --json`` tokens go to
stderr and stdout gets one object ``{"model", "content", "usage", "finish_reason"}``.
``usage --json``: the ``GET /v1/usage`` object (``items`` per day and model, ``totals``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from control.cli.client.http import ApiClient, ApiError
from control.cli.client.render import emit
from control.cli.client.terminal import terminal_safe

USAGE_COLUMNS = ("day", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    chat = commands.add_parser("chat", parents=[common], help="one chat completion through the inference gateway")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--model", required=True, help="model name (GET /v1/models)")
    chat.add_argument("--system", help="a system message to put first")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    chat.set_defaults(api=run_chat)

    usage = commands.add_parser("usage", parents=[common], help="your tenant's inference usage")
    usage.add_argument("--since", metavar="YYYY-MM-DD")
    usage.add_argument("--until", metavar="YYYY-MM-DD")
    usage.set_defaults(api=run_usage)

    models = commands.add_parser("models", parents=[common], help="models served now")
    models.set_defaults(api=run_models)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    body: dict[str, Any] = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens}
    if args.temperature is not None:
        body["temperature"] = args.temperature
    return body


def run_chat(args: argparse.Namespace, api: ApiClient) -> int:
    if not args.stream:
        answer = api.post("/v1/chat/completions", _body(args))
        emit(answer if args.json else answer["choices"][0]["message"]["content"], as_json=args.json)
        return 0
    tokens = sys.stderr if args.json else sys.stdout
    body = {**_body(args), "stream": True, "stream_options": {"include_usage": True}}
    parts: list[str] = []
    summary: dict[str, Any] = {"model": args.model, "content": "", "usage": None, "finish_reason": None}
    with api.stream("/v1/chat/completions", method="POST", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise_stream_error(chunk)
            summary["usage"] = chunk.get("usage") or summary["usage"]
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                parts.append(text)
                print(terminal_safe(text), end="", file=tokens, flush=True)
                summary["finish_reason"] = choice.get("finish_reason") or summary["finish_reason"]
    print(file=tokens)
    summary["content"] = "".join(parts)
    if args.json:
        emit(summary, as_json=True)
    return 0


def raise_stream_error(chunk: dict[str, Any]) -> None:
    """The gateway ends a stream that broke midway with an error event (exit 6)."""
    error = chunk["error"]
    raise ApiError(502, {"code": error.get("code") or "stream-broken", "detail": error.get("message") or str(error)})


def run_usage(args: argparse.Namespace, api: ApiClient) -> int:
    usage = api.get("/v1/usage", since=args.since, until=args.until)
    emit(usage if args.json else usage["items"], as_json=args.json, columns=USAGE_COLUMNS)
    return 0


def run_models(args: argparse.Namespace, api: ApiClient) -> int:
    models = api.get("/v1/models")
    emit(models if args.json else models["data"], as_json=args.json, columns=("id", "owned_by"))
    return 0
