"""Gateway overhead: streamed chat completions through the control plane's gateway vs
straight to the engine, same prompts, one run. Real components on CPU: `moorage serve` in
a process of its own (as in production; a control plane inside the bench's process would
share its interpreter with the bench's client), `transformers serve` on a tiny MoE under
the node supervisor with HttpHeartbeatSink (it registers like `moorage node run`).

    .venv/bin/python bench/gateway_overhead.py [--model DIR] [-n 16] [--max-tokens 64]

Requests go in pairs, one direct and one through the gateway with the same prompt, the
order alternating pair by pair so that drifts in machine load hit both paths alike. Each
pair gives a ratio of relayed tokens/s (gateway over direct) and a difference of time to
first token; the medians of those are the figures. Targets: >= 0.95x tokens/s and <= 10 ms
added TTFT. Tokens/s is the stream's rate once it flows (completion tokens after the first
/ time from the first to the end), so that the time to the first token, judged on its own,
is not counted twice; the end-to-end rate (all tokens / whole request) is printed beside it. Per-path medians and p90s are printed too, and
the control plane's CPU time per relayed token (what the gateway takes from an engine that
shares the machine; less sensitive to other load than the rates).
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
from _serve import (  # bench/ is on sys.path when a bench runs as a script
    cpu_seconds,
    free_port,
    start_moorage,
    stop,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.engine.commands import transformers_command
from inference.engine.policy import SupervisorPolicy
from inference.engine.supervisor import EngineSupervisor
from inference.heartbeat_http import HttpHeartbeatSink

PROMPTS = [
    "What is a deployment?",
    "Explain how a database backup works.",
    "Describe a rolling release of a web app.",
    "Why do containers need resource limits?",
]
TPS_TARGET = 0.95  # gateway / direct tokens per second, at least
TTFT_TARGET_MS = 10.0  # added time to first token, at most
PUBLIC_MODEL = "tiny-moe"


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


def stream_rate(sample: tuple[float, float, int]) -> float:
    """Tokens per second once the stream flows: the tokens after the first, over the time
    from the first to the end."""
    ttft, total, tokens = sample
    return (tokens - 1) / (total - ttft) if total > ttft and tokens > 1 else 0.0


def end_to_end_rate(sample: tuple[float, float, int]) -> float:
    return sample[2] / sample[1] if sample[1] > 0 else 0.0


def summarise(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    ttfts = sorted(s[0] for s in samples)
    rates = sorted(stream_rate(s) for s in samples)
    return {
        "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p90_ms": round(ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))] * 1000, 1),
        "tokens_per_s_median": round(statistics.median(rates), 1),
        "tokens_per_s_p10": round(rates[int(len(rates) * 0.1)], 1),
        "end_to_end_tokens_per_s_median": round(statistics.median(end_to_end_rate(s) for s in samples), 1),
        "completion_tokens_median": statistics.median(s[2] for s in samples),
    }


def control_plane(root: Path) -> tuple[str, str, object]:
    """(url, operator token, process): a migrated database with an operator key, served."""
    from control.domain.keys import KeyService
    from control.store import migrate
    from control.store.database import Store

    data_dir = root / "cp"
    data_dir.mkdir(mode=0o700)
    db = Store(f"sqlite:///{data_dir / 'moorage.db'}")
    migrate.upgrade(db.engine)
    operator = KeyService(db).bootstrap_operator("bench").token
    db.dispose()
    port = free_port()
    # Inference quotas sized for people would throttle the bench, nothing else differs.
    proc = start_moorage(data_dir, port, root / "cp.log", inference_requests_per_minute=10**6,
                         inference_tokens_per_minute=10**9, inference_token_budget=10**12)  # fmt: skip
    return f"http://127.0.0.1:{port}", operator, proc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="tiny MoE directory (default: build one, ~1 min)")
    parser.add_argument("-n", type=int, default=16, help="measured pairs (one direct, one gateway request each)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="hf-cache-"))
    from control.logging import configure_logging

    configure_logging("warning", "json")
    model_dir = args.model
    if model_dir is None:
        from inference.model.make_tiny_moe import make_tiny_moe

        model_dir = Path(tempfile.mkdtemp(prefix="tiny-moe-"))
        make_tiny_moe(model_dir, experts=16, top_k=4, layers=2, hidden=64, seed=0, train_steps=40, batch_size=8)

    pairs: list[dict[str, tuple[float, float, int]]] = []
    gateway_cpu: list[float] = []  # control-plane CPU seconds per relayed token, per request
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=300) as client:
        url, operator, proc = control_plane(Path(tmp))
        try:
            op = {"Authorization": f"Bearer {operator}"}
            node_token = client.post(f"{url}/v1/nodes", json={"name": "bench"}, headers=op).json()["token"]
            tenant = client.post(f"{url}/v1/tenants", json={"name": "bench"}, headers=op).json()["id"]
            key = client.post(f"{url}/v1/tenants/{tenant}/keys", json={"scopes": ["inference"], "name": "b"}, headers=op)
            token = key.json()["token"]
            command = transformers_command(model_dir, port=free_port())
            sink = HttpHeartbeatSink(url, node_token, public_model=PUBLIC_MODEL)
            supervisor = EngineSupervisor(command, SupervisorPolicy(health_timeout_s=300, heartbeat_interval_s=2),
                                          heartbeat=sink, gpu_probe=lambda: None)  # fmt: skip
            supervisor.start()
            try:
                assert supervisor.wait_healthy(300), supervisor.status().last_error
                auth = {"Authorization": f"Bearer {token}"}
                deadline = time.monotonic() + 30
                while PUBLIC_MODEL not in [m["id"] for m in client.get(f"{url}/v1/models", headers=auth).json()["data"]]:
                    assert time.monotonic() < deadline, "the node never registered its model"
                    time.sleep(0.2)
                generation = json.dumps(
                    {"max_new_tokens": args.max_tokens, "min_new_tokens": args.max_tokens, "do_sample": False}
                )
                paths = {
                    "direct": (command.base_url + "/v1/chat/completions", {}, command.served_model_name),
                    "gateway": (url + "/v1/chat/completions", auth, PUBLIC_MODEL),
                }
                for i in range(args.n + 2):  # the first two pairs warm both paths up and are not counted
                    order = ["direct", "gateway"] if i % 2 == 0 else ["gateway", "direct"]
                    pair = {}
                    for name in order:
                        target, headers, model = paths[name]
                        body = {
                            "model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                            "max_tokens": args.max_tokens, "stream": True, "stream_options": {"include_usage": True},
                            "generation_config": generation,
                        }  # fmt: skip
                        before = cpu_seconds(proc.pid)
                        pair[name] = stream_once(client, target, headers, body)
                        if name == "gateway" and i >= 2:
                            gateway_cpu.append((cpu_seconds(proc.pid) - before) / max(1, pair[name][2]))
                    if i >= 2:
                        pairs.append(pair)
            finally:
                supervisor.drain()
        finally:
            stop(proc)
    direct, gateway = summarise([p["direct"] for p in pairs]), summarise([p["gateway"] for p in pairs])
    ratios = sorted(stream_rate(p["gateway"]) / stream_rate(p["direct"]) for p in pairs)
    end_to_end = statistics.median(end_to_end_rate(p["gateway"]) / end_to_end_rate(p["direct"]) for p in pairs)
    added_ms = sorted((p["gateway"][0] - p["direct"][0]) * 1000 for p in pairs)
    ratio_tps, added_ttft = statistics.median(ratios), statistics.median(added_ms)
    print(json.dumps({"pairs": len(pairs), "max_tokens": args.max_tokens, "direct": direct, "gateway": gateway,
                      "ratio_tokens_per_s_median": round(ratio_tps, 3),
                      "ratio_tokens_per_s_range": [round(ratios[0], 3), round(ratios[-1], 3)],
                      "ratio_end_to_end_tokens_per_s_median": round(end_to_end, 3),
                      "added_ttft_ms_median": round(added_ttft, 1),
                      "added_ttft_ms_range": [round(added_ms[0], 1), round(added_ms[-1], 1)],
                      "gateway_cpu_us_per_token_median": round(statistics.median(gateway_cpu) * 1e6)}, indent=2))  # fmt: skip
    tps_ok, ttft_ok = ratio_tps >= TPS_TARGET, added_ttft <= TTFT_TARGET_MS
    print(
        f"summary: gateway vs direct: {ratio_tps:.2f}x tokens/s ({gateway['tokens_per_s_median']} vs "
        f"{direct['tokens_per_s_median']}; target >= {TPS_TARGET}x: {'met' if tps_ok else 'NOT met'}), "
        f"TTFT +{added_ttft:.1f} ms ({gateway['ttft_median_ms']} vs {direct['ttft_median_ms']} ms; "
        f"target <= {TTFT_TARGET_MS:.0f} ms: {'met' if ttft_ok else 'NOT met'}); medians of {len(pairs)} "
        f"interleaved pairs, {args.max_tokens} tokens each; end to end {end_to_end:.2f}x; control plane CPU "
        f"{statistics.median(gateway_cpu) * 1e6:.0f} us per relayed token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
