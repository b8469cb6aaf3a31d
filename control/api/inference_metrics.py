"""Inference metrics on the app's /metrics registry.

Per request (observed when the gateway settles it): tokens, requests, time to first token
and latency, labelled by node and by tenant (separate families, so the label sets stay
node × model and tenant × model rather than their product). Per node, read from the last
heartbeats at scrape time: health, requests in flight (gateway count and engine count),
GPU memory, and expert routing load per layer and expert where the node reported it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control.domain.inference import Inference
from control.domain.records import UsageRecord

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry, inference: Inference) -> None:
        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.node_tokens = counter("moorage_inference_node_tokens", "Tokens served, by node", ["node", "model", "kind"])
        self.tenant_tokens = counter("moorage_inference_tenant_tokens", "Tokens used, by tenant", ["tenant", "model", "kind"])
        self.requests = counter(
            "moorage_inference_requests", "Gateway requests by outcome (ok, error, rejected, cancelled, stalled)",
            ["tenant", "model", "status"],
        )  # fmt: skip
        self.node_ttft = histogram(
            "moorage_inference_node_ttft_seconds",
            "Time to first token through the gateway, by node",
            ["node", "model"],
            TTFT_BUCKETS,
        )
        self.tenant_ttft = histogram(
            "moorage_inference_tenant_ttft_seconds", "Time to first token through the gateway, by tenant", ["tenant", "model"],
            TTFT_BUCKETS,
        )  # fmt: skip
        self.node_latency = histogram(
            "moorage_inference_node_request_duration_seconds", "Gateway request duration, by node", ["node", "model", "status"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.tenant_latency = histogram(
            "moorage_inference_tenant_request_duration_seconds", "Gateway request duration, by tenant",
            ["tenant", "model", "status"], LATENCY_BUCKETS,
        )  # fmt: skip
        registry.register(_NodeCollector(inference))

    def observe(self, record: UsageRecord) -> None:
        node, tenant, model, status = record.node_id or "none", record.tenant_id, record.model, record.status
        self.requests.labels(tenant, model, status).inc()
        for kind, tokens in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens)):
            if tokens:
                self.node_tokens.labels(node, model, kind).inc(tokens)
                self.tenant_tokens.labels(tenant, model, kind).inc(tokens)
        seconds = record.latency_ms / 1000
        self.node_latency.labels(node, model, status).observe(seconds)
        self.tenant_latency.labels(tenant, model, status).observe(seconds)
        if record.ttft_ms is not None:
            self.node_ttft.labels(node, model).observe(record.ttft_ms / 1000)
            self.tenant_ttft.labels(tenant, model).observe(record.ttft_ms / 1000)


class _NodeCollector(Collector):
    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def describe(self) -> Iterator[Any]:
        # The registry describes collectors when they register, before the database is migrated.
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        healthy, in_flight, gpu_used, gpu_total, load, utilisation, entropy = families = self._families()
        for node in self.inference.nodes.snapshot():
            report = node.report
            healthy.add_metric([node.id], 1.0 if self.inference.health(node).status == "healthy" else 0.0)
            in_flight.add_metric([node.id, "gateway"], self.inference.router.in_flight(node.id))
            if isinstance(report.get("requests_in_flight"), int):
                in_flight.add_metric([node.id, "engine"], report["requests_in_flight"])
            for gpu in report.get("gpus") or ():
                gpu_used.add_metric([node.id, str(gpu["index"])], gpu["used_mib"])
                gpu_total.add_metric([node.id, str(gpu["index"])], gpu["total_mib"])
            for layer in (report.get("expert_load") or {}).get("layers") or ():
                index = str(layer["layer"])
                for expert, tokens in enumerate(layer.get("load") or ()):
                    load.add_metric([node.id, index, str(expert)], tokens)
                for expert, value in enumerate(layer.get("utilisation") or ()):
                    utilisation.add_metric([node.id, index, str(expert)], value)
                if layer.get("load_entropy") is not None:
                    entropy.add_metric([node.id, index], layer["load_entropy"])
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        healthy = GaugeMetricFamily("moorage_inference_node_healthy", "1 if the node's status is healthy", labels=["node"])
        in_flight = GaugeMetricFamily(
            "moorage_inference_node_requests_in_flight", "Requests in flight (gateway: counted here; engine: reported)",
            labels=["node", "source"],
        )  # fmt: skip
        gpu_used = GaugeMetricFamily("moorage_inference_node_gpu_memory_used_mib", "GPU memory used", labels=["node", "gpu"])
        gpu_total = GaugeMetricFamily("moorage_inference_node_gpu_memory_total_mib", "GPU memory", labels=["node", "gpu"])
        load = GaugeMetricFamily(
            "moorage_inference_expert_load_tokens", "Tokens routed to each expert (node's last report)",
            labels=["node", "layer", "expert"],
        )  # fmt: skip
        utilisation = GaugeMetricFamily(
            "moorage_inference_expert_utilisation",
            "Expert load ÷ fair share (1.0 = balanced)",
            labels=["node", "layer", "expert"],
        )
        entropy = GaugeMetricFamily(
            "moorage_inference_expert_load_entropy", "Entropy of a layer's expert load ÷ log(experts)", labels=["node", "layer"]
        )
        return [healthy, in_flight, gpu_used, gpu_total, load, utilisation, entropy]
