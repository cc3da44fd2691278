"""Prometheus metrics of the service, in one registry per service instance, and the contract that
alerts, the dashboard and the runbooks' gates read them by.

Latency per stage (queue, batch, model, post) as histograms, per-layer model time for a sampled
share of batches, what is in flight and queued, batch sizes, the operating mode, sheds and errors.

The contract of `POST /v1/intent` (one rule: every response is counted exactly once, in
`peakguard_request_seconds`, so that any share of responses is one label over the same count):

- `peakguard_request_seconds{outcome, served_by}`: every response observed once, whatever happens,
  an unexpected exception included (it becomes a JSON 500). `outcome` is one of `OUTCOMES`:
  `answered` (2xx with an answer), `shed` (refused by admission control: 429/503 with Retry-After),
  `client_error` (4xx the request caused: not JSON, too long, ...), `server_error` (every other 5xx:
  inference failed, not ready yet, unhandled exception). `served_by` is `model` or `cache` for
  answered responses and `none` for the rest.
- `peakguard_errors_total{kind}`: why a response was a client or server error (`http_400`,
  `http_413`, `inference`, `not_ready`, `unhandled`, ...); once per such response, so its sum is
  the count of `outcome=~"client_error|server_error"`.
- `peakguard_shed_total{status}`: once per shed response; its sum is the count of `outcome="shed"`.
- `peakguard_cache_answers_total`: the count of `outcome="answered",served_by="cache"`.
- `peakguard_answer_table_hits_lost_total`: sheds (in shedding mode) the answer table could have
  answered. Admission comes before the body is parsed, so a refused request never reaches the
  table: this is what that order costs.

So: answered latency selects `outcome="answered"`; the error-rate alert is
`outcome="server_error"` over all responses (client errors are the caller's, and page no one);
the shed rate is `outcome="shed"` over all responses. `ServiceMetrics.observe_response` is the one
place that counts, and keeps the invariants above by construction.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OUTCOMES", "SERVED_BY", "Outcome", "ServedBy", "ServiceMetrics"]

Outcome = Literal["answered", "shed", "client_error", "server_error"]
ServedBy = Literal["model", "cache", "none"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
"""Every value of the `outcome` label of `peakguard_request_seconds`."""
SERVED_BY: tuple[ServedBy, ...] = get_args(ServedBy)
"""Every value of its `served_by` label: what answered, `none` unless the outcome is answered."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 12.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_VALID_PAIRS: tuple[tuple[Outcome, ServedBy], ...] = (
    ("answered", "model"), ("answered", "cache"), ("shed", "none"), ("client_error", "none"), ("server_error", "none"),
)  # fmt: skip


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "peakguard_request_seconds",
            "End-to-end latency of every POST /v1/intent response, by outcome and what answered.",
            ["outcome", "served_by"],
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
        self.answer_table_hits_lost = Counter(
            "peakguard_answer_table_hits_lost_total",
            "Shed requests the answer table could have answered (admission comes before parsing).",
            registry=r,
        )
        self.errors = Counter(
            "peakguard_errors_total", "Client and server error responses, by why they failed.", ["kind"], registry=r
        )
        self.breaker_open = Gauge(
            "peakguard_breaker_open", "1 while the circuit breaker serves the light model.", registry=r
        )
        self.breaker_switches = Counter(
            "peakguard_breaker_switches_total", "Circuit breaker switches.", ["to"], registry=r
        )
        self.ready = Gauge("peakguard_ready", "1 once weights are loaded and a warm-up batch ran.", registry=r)
        # Every valid (outcome, served_by) pair exists from the start at 0, so a ratio over them is 0
        # on a quiet pod rather than no data, and a dashboard shows each outcome before it happens.
        for outcome, served_by in _VALID_PAIRS:
            self.request_seconds.labels(outcome=outcome, served_by=served_by)

    def observe_response(self, *, outcome: Outcome, served_by: ServedBy, seconds: float, reason: str = "") -> None:
        """Count one POST /v1/intent response: its latency, and the detail counter of its outcome.

        `reason` is required for every outcome but answered: the `kind` of errors_total for a client
        or server error, the HTTP `status` of shed_total for a shed."""
        if (outcome, served_by) not in _VALID_PAIRS:
            raise ValueError(f"outcome {outcome!r} with served_by {served_by!r}: valid pairs are {_VALID_PAIRS}")
        if (outcome == "answered") == bool(reason):
            raise ValueError(f"outcome {outcome!r} with reason {reason!r}: only a non-answer has a reason")
        self.request_seconds.labels(outcome=outcome, served_by=served_by).observe(seconds)
        if outcome == "shed":
            self.shed.labels(status=reason).inc()
        elif outcome in ("client_error", "server_error"):
            self.errors.labels(kind=reason).inc()
        elif served_by == "cache":
            self.cache_answers.inc()

    def set_mode(self, model: str, precision: str, shedding: bool) -> None:
        self.mode.clear()
        self.mode.labels(model=model, precision=precision, shedding=str(shedding).lower()).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
