"""Prometheus metrics of the service, in one registry per service instance.

Latency per stage (queue, batch, model, post) as histograms, per-layer model time for a sampled
share of batches, what is in flight and queued, batch sizes, the operating mode, sheds and errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 12.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "peakguard_request_seconds",
            "End-to-end request latency.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "peakguard_stage_seconds", "Latency per stage: queue, batch (tokenise/pad), model, post.",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.layer_seconds = Histogram(
            "peakguard_layer_seconds", "Model time per layer, for a sampled share of batches.",
            ["model", "layer"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("peakguard_in_flight_requests", "Requests being handled.", registry=r)
        self.queue_depth = Gauge("peakguard_queue_depth", "Requests waiting for a batch.", registry=r)
        self.batch_size = Histogram(
            "peakguard_batch_size", "Requests per model batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.mode = Gauge(
            "peakguard_mode", "The operating mode (1 for the active combination).",
            ["model", "precision", "shedding"], registry=r,
        )  # fmt: skip
        self.shed = Counter("peakguard_shed_total", "Requests refused by admission control.", ["status"], registry=r)
        self.cache_answers = Counter(
            "peakguard_cache_answers_total", "Requests answered from the answer table.", registry=r
        )
        self.errors = Counter("peakguard_errors_total", "Requests that failed.", ["kind"], registry=r)
        self.breaker_open = Gauge(
            "peakguard_breaker_open", "1 while the circuit breaker serves the light model.", registry=r
        )
        self.breaker_switches = Counter(
            "peakguard_breaker_switches_total", "Circuit breaker switches.", ["to"], registry=r
        )
        self.ready = Gauge("peakguard_ready", "1 once weights are loaded and a warm-up batch ran.", registry=r)

    def set_mode(self, model: str, precision: str, shedding: bool) -> None:
        self.mode.clear()
        self.mode.labels(model=model, precision=precision, shedding=str(shedding).lower()).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
