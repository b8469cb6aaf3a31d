"""``moorage chat`` and ``moorage usage``: the OpenAI-compatible inference gateway, and usage.

``chat --json``: the gateway's chat completion object unchanged (OpenAI shape). ``chat
--stream`` prints tokens to stdout as they arrive; with ``--stream --json`` tokens go to
stderr and stdout gets one object ``{"model", "content", "usage", "finish_reason"}``.
``usage --json``: the ``GET /v1/usage`` object (``--kind inference``, the default: ``items``
per day and model; ``compute``, ``storage``, ``builds``: ``items`` per hour; all with ``kind``
and ``totals``); ``--operator`` reads ``GET /v1/operator/usage`` (every tenant, or ``--tenant``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from control.cli.client.http import ApiClient, ApiError
from control.cli.client.render import emit
from control.cli.client.terminal import terminal_safe

USAGE_KINDS = ("inference", "compute", "storage", "builds")
STORAGE_KINDS = ("volumes", "database_volumes", "images", "backups", "snapshots")
USAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "inference": ("day", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"),
    "compute": ("hour", "cpu_seconds", "memory_average_bytes", "memory_peak_bytes", "net_rx_bytes", "net_tx_bytes"),
    "storage": ("hour", *(f"{kind}_peak_bytes" for kind in STORAGE_KINDS)),
    "builds": ("hour", "build_seconds", "builds"),
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    chat = commands.add_parser("chat", parents=[common], help="one chat completion through the inference gateway")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--model", required=True, help="model name (GET /v1/models)")
    chat.add_argument("--system", help="a system message to put first")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    chat.set_defaults(api=run_chat)

    usage = commands.add_parser("usage", parents=[common], help="your tenant's usage: inference, compute, storage, builds")
    usage.add_argument("--kind", choices=USAGE_KINDS, default="inference", help="what to report (default: inference)")
    usage.add_argument("--since", metavar="YYYY-MM-DD")
    usage.add_argument("--until", metavar="YYYY-MM-DD")
    usage.add_argument("--operator", action="store_true", help="every tenant's (an operator key)")
    usage.add_argument("--tenant", metavar="TENANT_ID", help="with --operator: only this tenant")
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
    path, scope = ("/v1/operator/usage", {"tenant_id": args.tenant}) if args.operator else ("/v1/usage", {})
    usage = api.get(path, kind=args.kind, since=args.since, until=args.until, **scope)
    if args.json:
        emit(usage, as_json=True)
        return 0
    columns = ("tenant_id", *USAGE_COLUMNS[args.kind]) if args.operator else USAGE_COLUMNS[args.kind]
    emit([_flat(item) for item in usage["items"]], as_json=False, columns=columns)
    return 0


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    """A storage hour's nested figures as columns: ``images_peak_bytes``, ..."""
    flat = dict(item)
    for kind in STORAGE_KINDS:
        if isinstance(item.get(kind), dict):
            flat[f"{kind}_peak_bytes"] = item[kind]["peak_bytes"]
    return flat


def run_models(args: argparse.Namespace, api: ApiClient) -> int:
    models = api.get("/v1/models")
    emit(models if args.json else models["data"], as_json=args.json, columns=("id", "owned_by"))
    return 0
