"""Requests in flight, where the engine tells: vLLM's Prometheus gauges
`vllm:num_requests_running` + `vllm:num_requests_waiting`. `transformers serve` has no
metrics, so its count is None (unknown, not zero)."""

from __future__ import annotations

import re

import httpx

_GAUGE = re.compile(r"^vllm:num_requests_(running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def parse_vllm_in_flight(metrics_text: str) -> int | None:
    values = [float(match.group(2)) for match in _GAUGE.finditer(metrics_text)]
    return int(sum(values)) if values else None


def requests_in_flight(base_url: str, metrics_path: str | None, timeout: float = 2.0) -> int | None:
    if metrics_path is None:
        return None
    try:
        response = httpx.get(base_url + metrics_path, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_vllm_in_flight(response.text)
