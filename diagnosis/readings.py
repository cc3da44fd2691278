"""What a recording says per pod over a window: responses by outcome, p99, where each request's
time went (queue, batch, model, post), each layer's time per sampled batch, batch sizes, queue
depth, the breaker, and what Kubernetes said of the pod and its node.

A figure the window cannot support is None, never 0: a pod with no sampled batch has no layer
times; fewer than `MIN_ANSWERS` answers give no p99.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from diagnosis.series import Recording, Series

__all__ = ["MIN_ANSWERS", "FleetReading", "PodReading", "Window", "histogram_quantile", "read"]

MIN_ANSWERS = 100
"""Answers a p99 needs (as the runbooks' gates: with fewer it is the slowest one or two)."""
STAGES = ("queue", "batch", "model", "post")
"""The service's stages in order; queue is observed per request, the others per batch (and every
request of a batch waits for all of it), so a request's time is the sum of their means."""


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class PodReading:
    pod: str
    scraped: bool
    """The service's metrics have samples in the window (a pod not Ready is not scraped)."""
    first_seen: float | None
    """When its metrics first appear in the recording."""
    last_seen: float | None
    responses: Mapping[str, float]
    """Responses in the window by outcome."""
    p99_seconds: float | None
    stage_seconds: Mapping[str, float]
    """Mean seconds of each stage in the window (queue per request; batch, model, post per batch)."""
    layer_seconds: Mapping[tuple[str, str], float]
    """Mean seconds per sampled batch, by (model, layer)."""
    layer_batches: Mapping[tuple[str, str], float]
    batch_size: float | None
    queue_depth: float | None
    """Mean of the gauge over the window."""
    breaker_open: float | None
    """Share of the window's samples with the breaker open."""
    node: str | None
    node_ready: float | None
    """The lowest Ready value of its node in the window (0: NotReady at some point)."""
    pod_ready: float | None
    """Share of the window's samples the pod was Ready (kube-state-metrics)."""
    created: float | None
    gpu_memory: float | None
    listed: bool | None = None
    """kube-state-metrics lists the pod in the window (None without kube-state-metrics): a pod deleted
    on purpose is no longer listed; one whose process died or node went NotReady still is."""

    @property
    def answered(self) -> float:
        return self.responses.get("answered", 0.0)

    @property
    def total(self) -> float:
        return sum(self.responses.values())

    @property
    def shed_share(self) -> float | None:
        return self.responses.get("shed", 0.0) / self.total if self.total else None

    @property
    def request_seconds(self) -> float | None:
        """A request's mean time inside the service: the stages' means summed (None without a model stage)."""
        if "model" not in self.stage_seconds:
            return None
        return sum(self.stage_seconds.get(stage, 0.0) for stage in STAGES)

    @property
    def model_seconds(self) -> float | None:
        return self.stage_seconds.get("model")


@dataclass(frozen=True)
class FleetReading:
    window: Window
    pods: Mapping[str, PodReading]
    responses: Mapping[str, float]
    p99_seconds: float | None
    missing: tuple[str, ...] = field(default_factory=tuple)
    """Queries the recording does not hold (not asked, or Prometheus had nothing)."""

    @property
    def total(self) -> float:
        return sum(self.responses.values())

    def share(self, outcome: str) -> float | None:
        return self.responses.get(outcome, 0.0) / self.total if self.total else None

    @property
    def serving(self) -> list[PodReading]:
        return [p for p in self.pods.values() if p.scraped and p.total > 0]


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's `histogram_quantile` on cumulative bucket counts (bound -> count): linear within
    the bucket the rank falls in; None with no observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # as Prometheus: the highest finite bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _by(series: Sequence[Series], label: str) -> dict[str, list[Series]]:
    grouped: dict[str, list[Series]] = {}
    for s in series:
        if label in s.labels:
            grouped.setdefault(s.labels[label], []).append(s)
    return grouped


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def read(recording: Recording, window: Window) -> FleetReading:
    """Every pod's reading over `window`, and the fleet's."""
    fresh_after = recording.start + 1.5 * recording.step
    responses = _by(recording.of("responses"), "pod")
    pods = set(responses) | set(_by(recording.of("pod_node"), "pod")) | set(_by(recording.of("pod_created"), "pod"))
    node_ready = {s.labels["node"]: s for s in recording.of("node_ready") if "node" in s.labels}
    fleet_buckets: dict[float, float] = {}
    readings = {}
    for pod in sorted(pods):

        def of(name: str, pod: str = pod) -> list[Series]:
            return [s for s in recording.of(name) if s.labels.get("pod") == pod]

        own = responses.get(pod, [])
        first = min((s.first for s in own), default=None)
        last = max((s.last for s in own), default=None)
        created = [v for s in of("pod_created") for v in s.between(recording.start, recording.end)]
        # Counters start at 0 in a pod created inside the recording; a pod merely scraped late (not
        # Ready at the start) has counted since long before, and its first sample is its baseline.
        from_zero = min(created) > recording.start if created else first is not None and first > fresh_after

        def grew(s: Series, from_zero: bool = from_zero) -> float:
            return s.increase(window.start, window.end, from_zero=from_zero) or 0.0

        outcomes: dict[str, float] = {}
        for s in own:
            outcomes[s.labels.get("outcome", "")] = outcomes.get(s.labels.get("outcome", ""), 0.0) + grew(s)
        buckets: dict[float, float] = {}
        for s in of("answered_le"):
            bound = float(s.labels["le"]) if "le" in s.labels else math.inf
            buckets[bound] = buckets.get(bound, 0.0) + grew(s)
            fleet_buckets[bound] = fleet_buckets.get(bound, 0.0) + grew(s)
        answered = outcomes.get("answered", 0.0)
        p99 = histogram_quantile(0.99, buckets) if answered >= MIN_ANSWERS else None
        stages = _ratios(of("stage_sum"), of("stage_count"), ("stage",), grew)
        layers = {
            (key[0], key[1]): mean
            for key, mean in _ratios(of("layer_sum"), of("layer_count"), ("model", "layer"), grew).items()
        }
        layer_batches = {key: float(sum(grew(s) for s in of("layer_count") if _key(s, ("model", "layer")) == key))
                         for key in layers}  # fmt: skip
        batch = _ratios(of("batch_sum"), of("batch_count"), (), grew).get(())
        node = next((s.labels.get("node") for s in of("pod_node") if s.between(window.start, window.end)), None)
        if node is None:
            node = next((s.labels.get("node") for s in of("pod_node")), None)
        node_values = node_ready[node].between(window.start, window.end) if node in node_ready else []
        ready_values = [v for s in of("pod_ready") for v in s.between(window.start, window.end)]
        listed = any(s.between(window.start, window.end) for s in of("pod_node")) if recording.has("pod_node") else None
        scraped = any(s.between(window.start, window.end) for s in own)
        readings[pod] = PodReading(
            pod=pod, scraped=scraped, first_seen=first, last_seen=last,
            responses=outcomes, p99_seconds=p99,
            stage_seconds={key[0]: value for key, value in stages.items()},
            layer_seconds=layers, layer_batches=layer_batches, batch_size=batch,
            queue_depth=_mean([v for s in of("queue_depth") for v in s.between(window.start, window.end)]),
            breaker_open=_mean([1.0 if v >= 0.5 else 0.0 for s in of("breaker_open")
                                for v in s.between(window.start, window.end)]),
            node=node, node_ready=min(node_values) if node_values else None,
            pod_ready=_mean([1.0 if v >= 0.5 else 0.0 for v in ready_values]),
            created=min(created) if created else None,
            gpu_memory=max((v for s in of("gpu_memory") for v in s.between(window.start, window.end)), default=None),
            listed=listed,
        )  # fmt: skip
    fleet_responses: dict[str, float] = {}
    for reading in readings.values():
        for outcome, count in reading.responses.items():
            fleet_responses[outcome] = fleet_responses.get(outcome, 0.0) + count
    answered = fleet_responses.get("answered", 0.0)
    return FleetReading(
        window=window,
        pods=readings,
        responses=fleet_responses,
        p99_seconds=histogram_quantile(0.99, fleet_buckets) if answered >= MIN_ANSWERS else None,
        missing=tuple(name for name in ("responses", "answered_le", "stage_sum", "stage_count", "layer_sum",
                                        "layer_count", "batch_sum", "batch_count", "queue_depth", "breaker_open",
                                        "node_ready", "pod_node", "pod_ready", "pod_created")
                      if not recording.has(name)),
    )  # fmt: skip


def _key(series: Series, labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(series.labels.get(label, "") for label in labels)


def _ratios(
    sums: Sequence[Series], counts: Sequence[Series], labels: tuple[str, ...], grew: Callable[[Series], float]
) -> dict[tuple[str, ...], float]:
    """Mean per observation (sum's increase over count's) by `labels`; keys with no observation are left out."""
    total: dict[tuple[str, ...], float] = {}
    observed: dict[tuple[str, ...], float] = {}
    for s in sums:
        total[_key(s, labels)] = total.get(_key(s, labels), 0.0) + grew(s)
    for s in counts:
        observed[_key(s, labels)] = observed.get(_key(s, labels), 0.0) + grew(s)
    return {key: total.get(key, 0.0) / n for key, n in observed.items() if n > 0}
