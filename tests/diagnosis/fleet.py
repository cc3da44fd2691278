"""Recordings built from a description of each pod over time, shaped as Prometheus's range API
returns them: raw cumulative counters and gauges sampled every step. For the checks' unit tests;
the acceptance of diagnose is on the lab's recordings (test_recordings.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from diagnosis.series import Recording, parse_range_result

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 12.0, math.inf)
LAYERS = ("block0", "block1", "block2", "head")


@dataclass
class Pod:
    name: str
    node: str = "node-a"
    born: float | None = None
    """Seconds into the recording it appears (None: there from before the start)."""
    gone: float | None = None
    """Seconds into the recording its metrics stop."""
    deleted: bool = False
    """With `gone`: the pod was deleted then (kube-state-metrics stops listing it too)."""
    answered: float = 20.0
    """Answers a second."""
    shed: float = 0.0
    latency: float = 0.09
    queue: float = 0.01
    model: float = 0.05
    batch_size: float = 4.0
    serves: str = "full"
    """The model answering (the breaker's open state serves the light one)."""
    layers: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LAYERS, 0.01))
    changes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """(seconds into the recording, attributes that hold from then on)."""

    def at(self, offset: float) -> Pod:
        now = Pod(**{k: v for k, v in self.__dict__.items() if k != "changes"})
        for when, values in sorted(self.changes, key=lambda c: c[0]):
            if offset >= when:
                for key, value in values.items():
                    setattr(now, key, dict(value) if isinstance(value, dict) else value)
        return now


def build(
    pods: list[Pod],
    *,
    seconds: float = 90.0,
    step: float = 1.0,
    slo: float = 0.5,
    start: float = 1_000_000.0,
    nodes_not_ready: dict[str, float] | None = None,
    without: tuple[str, ...] = (),
) -> Recording:
    """The recording of `pods` over `seconds`; `nodes_not_ready`: node -> seconds in when it stops being
    Ready; `without`: queries left out (as if Prometheus had none of them)."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[list[float]]] = {}

    def put(name: str, labels: dict[str, str], t: float, value: float) -> None:
        series.setdefault((name, tuple(sorted(labels.items()))), []).append([t, value])

    times = [start + i * step for i in range(int(seconds / step) + 1)]
    for pod in pods:
        totals: dict[tuple[str, ...], float] = {}

        def add(key: tuple[str, ...], value: float, totals: dict[tuple[str, ...], float] = totals) -> float:
            totals[key] = totals.get(key, 0.0) + value
            return totals[key]

        born = start + (pod.born or 0.0) if pod.born is not None else None
        for t in times:
            offset = t - start
            if pod.born is not None and offset < pod.born:
                continue
            if pod.deleted and pod.gone is not None and offset > pod.gone:
                continue
            put("pod_node", {"pod": pod.name, "node": pod.node}, t, 1.0)
            put("pod_created", {"pod": pod.name}, t, born if born is not None else start - 3600)
            if pod.gone is not None and offset > pod.gone:
                put("pod_ready", {"pod": pod.name}, t, 0.0)
                continue
            put("pod_ready", {"pod": pod.name}, t, 1.0)
            now = pod.at(offset)
            first = pod.born is not None and offset == pod.born
            dt = 0.0 if first else step
            labels = {"pod": pod.name}
            put("responses", labels | {"outcome": "answered"}, t, add(("answered",), now.answered * dt))
            put("responses", labels | {"outcome": "shed"}, t, add(("shed",), now.shed * dt))
            for bound in BOUNDS:
                put(
                    "answered_le",
                    labels | {"le": "+Inf" if math.isinf(bound) else str(bound)},
                    t,
                    add(("le", str(bound)), now.answered * dt if now.latency <= bound else 0.0),
                )
            batches = now.answered / now.batch_size * dt
            for stage, mean, count in (
                ("queue", now.queue, now.answered * dt),
                ("model", now.model, batches),
                ("batch", 0.001, batches),
                ("post", 0.001, batches),
            ):
                put("stage_sum", labels | {"stage": stage}, t, add(("ss", stage), mean * count))
                put("stage_count", labels | {"stage": stage}, t, add(("sc", stage), count))
            put("batch_sum", labels, t, add(("bs",), now.answered * dt))
            put("batch_count", labels, t, add(("bc",), batches))
            sampled = batches / 4
            for layer, mean in now.layers.items():
                for served in ("full", "light"):
                    key = labels | {"model": served, "layer": layer}
                    running = served == now.serves
                    put("layer_sum", key, t, add(("ls", served, layer), mean * sampled if running else 0.0))
                    put("layer_count", key, t, add(("lc", served, layer), sampled if running else 0.0))
            put("queue_depth", labels, t, now.queue * now.answered)
            put("breaker_open", labels, t, 0.0)
    for node in sorted({p.node for p in pods}):
        for t in times:
            down = (nodes_not_ready or {}).get(node)
            put("node_ready", {"node": node}, t, 0.0 if down is not None and t - start >= down else 1.0)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for (name, labels), samples in series.items():
        if name not in without:
            grouped.setdefault(name, []).append({"metric": dict(labels), "values": samples})
    return Recording(
        namespace="peakguard", start=start, end=times[-1], step=step,
        series={name: parse_range_result(found, source=name) for name, found in grouped.items()}, slo_seconds=slo,
    )  # fmt: skip
