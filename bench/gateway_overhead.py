"""Gateway overhead: streamed chat completions through the control plane's gateway vs
straight to the engine, same prompts, one run. Real components on CPU: the control plane
under uvicorn, `transformers serve` on a tiny MoE under the node supervisor with
HttpHeartbeatSink (it registers like `moorage node run`). Requests alternate direct /
gateway so machine load drifts hit both equally.

    .venv/bin/python bench/gateway_overhead.py [--model DIR] [-n 8] [--max-tokens 64]

Prints per-path TTFT (median, p90) and tokens/s (completion tokens ÷ stream time,
median), the gateway/direct ratios, and a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.engine.commands import transformers_command
from inference.engine.policy import SupervisorPolicy
from inference.engine.supervisor import EngineSupervisor
from inference.heartbeat_http import HttpHeartbeatSink
from tests.inference.gateway_helpers import control_plane
from tests.inference.helpers import free_port

PROMPTS = [
    "What is a deployment?",
    "Explain how a database backup works.",
    "Describe a rolling release of a web app.",
    "Why do containers need resource limits?",
]


def stream_once(client: httpx.Client, url: str, headers: dict[str, str], body: dict) -> tuple[float, float, int]:
    """(ttft s, total s, completion tokens) of one streamed request."""
    started = time.perf_counter()
    ttft = None
    usage = None
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - started
    return ttft if ttft is not None else total, total, int((usage or {}).get("completion_tokens", 0))


def summarise(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    ttfts = sorted(s[0] for s in samples)
    rates = [s[2] / s[1] for s in samples if s[1] > 0]
    return {
        "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p90_ms": round(ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))] * 1000, 1),
        "tokens_per_s_median": round(statistics.median(rates), 1),
        "completion_tokens_median": statistics.median(s[2] for s in samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="tiny MoE directory (default: build one, ~1 min)")
    parser.add_argument("-n", type=int, default=8, help="requests per path")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="hf-cache-"))
    from control.logging import configure_logging

    model_dir = args.model
    if model_dir is None:
        from inference.model.make_tiny_moe import make_tiny_moe

        model_dir = Path(tempfile.mkdtemp(prefix="tiny-moe-"))
        make_tiny_moe(model_dir, experts=16, top_k=4, layers=2, hidden=64, seed=0, train_steps=40, batch_size=8)

    with tempfile.TemporaryDirectory() as tmp, control_plane(Path(tmp), log_level="warning") as platform:
        configure_logging("warning", "json")
        _node_id, token = platform.enroll("bench")
        command = transformers_command(model_dir, port=free_port())
        sink = HttpHeartbeatSink(platform.url, token, public_model="tiny-moe")
        supervisor = EngineSupervisor(command, SupervisorPolicy(health_timeout_s=300, heartbeat_interval_s=2), heartbeat=sink, gpu_probe=lambda: None)
        supervisor.start()
        try:
            assert supervisor.wait_healthy(300), supervisor.status().last_error
            _, key = platform.tenant("bench")
            generation = json.dumps({"max_new_tokens": args.max_tokens, "do_sample": False})  # no EOS: fixed length
            paths = {
                "direct": (command.base_url + "/v1/chat/completions", {}, command.served_model_name),
                "gateway": (platform.url + "/v1/chat/completions", {"Authorization": f"Bearer {key}"}, "tiny-moe"),
            }
            samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
            with httpx.Client(timeout=300) as client:
                for i in range(args.n + 1):  # the first round warms both paths up and is not counted
                    for name, (url, headers, model) in paths.items():
                        body = {
                            "model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                            "max_tokens": args.max_tokens, "stream": True, "stream_options": {"include_usage": True},
                            "generation_config": generation,
                        }  # fmt: skip
                        result = stream_once(client, url, headers, body)
                        if i:
                            samples[name].append(result)
        finally:
            supervisor.drain()
    direct, gateway = summarise(samples["direct"]), summarise(samples["gateway"])
    ratio_tps = gateway["tokens_per_s_median"] / direct["tokens_per_s_median"]
    ratio_ttft = gateway["ttft_median_ms"] / direct["ttft_median_ms"]
    print(json.dumps({"requests_per_path": args.n, "max_tokens": args.max_tokens, "direct": direct, "gateway": gateway,
                      "ratio_tokens_per_s": round(ratio_tps, 3), "ratio_ttft": round(ratio_ttft, 3)}, indent=2))  # fmt: skip
    print(
        f"gateway vs direct: {ratio_tps:.2f}x tokens/s ({gateway['tokens_per_s_median']} vs {direct['tokens_per_s_median']}), "
        f"TTFT median {gateway['ttft_median_ms']} ms vs {direct['ttft_median_ms']} ms "
        f"(+{gateway['ttft_median_ms'] - direct['ttft_median_ms']:.1f} ms), n={args.n} each, {args.max_tokens} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
