"""The metric series a diagnosis reads, and a recording of them.

One set of PromQL queries, asked of Prometheus's range API live (`peakguard diagnose --env`) and by
the drill at the end of a run (`lab.drill`, kept in its JSON): a diagnosis of a recording is the
diagnosis the cluster would have given. Counters are read raw (not `rate`d): the analysis takes
their increase over whatever window it judges, so one recording serves any window, and a per-layer
histogram sampled every 20th batch is not thinned further by a short rate window.

Every series is summed by the labels that identify it (`pod`, and `stage`, `layer`, `le`, ...), so a
scrape's own labels (instance, job, container) never split a pod in two.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["QUERIES", "Recording", "RecordingError", "Series", "queries", "record"]


@dataclass(frozen=True)
class _Query:
    expr: str
    """PromQL; `{ns}` is the model service's namespace."""
    counter: bool
    what: str


QUERIES: Mapping[str, _Query] = {
    # The service's own metrics (model_service/metrics.py owns their contract).
    "responses": _Query(
        'sum by (pod, outcome) (peakguard_request_seconds_count{{namespace="{ns}"}})', True,
        "every response by outcome (answered, shed, client_error, server_error)",
    ),
    "answered_le": _Query(
        'sum by (pod, le) (peakguard_request_seconds_bucket{{namespace="{ns}",outcome="answered"}})', True,
        "answered latency histogram: cumulative count at or under each bound",
    ),
    "stage_sum": _Query('sum by (pod, stage) (peakguard_stage_seconds_sum{{namespace="{ns}"}})', True,
                        "seconds per stage: queue (per request), batch, model, post (per batch)"),
    "stage_count": _Query('sum by (pod, stage) (peakguard_stage_seconds_count{{namespace="{ns}"}})', True,
                          "observations per stage"),
    "layer_sum": _Query('sum by (pod, model, layer) (peakguard_layer_seconds_sum{{namespace="{ns}"}})', True,
                        "seconds per model layer on the sampled batches"),
    "layer_count": _Query('sum by (pod, model, layer) (peakguard_layer_seconds_count{{namespace="{ns}"}})', True,
                          "sampled batches per layer"),
    "batch_sum": _Query('sum by (pod) (peakguard_batch_size_sum{{namespace="{ns}"}})', True, "requests batched"),
    "batch_count": _Query('sum by (pod) (peakguard_batch_size_count{{namespace="{ns}"}})', True, "batches"),
    "queue_depth": _Query('max by (pod) (peakguard_queue_depth{{namespace="{ns}"}})', False,
                          "requests waiting for a batch"),
    "in_flight": _Query('max by (pod) (peakguard_in_flight_requests{{namespace="{ns}"}})', False,
                        "requests being handled"),
    "breaker_open": _Query('max by (pod) (peakguard_breaker_open{{namespace="{ns}"}})', False,
                           "1 while the breaker serves the light model"),
    "gpu_memory": _Query(
        'max by (pod) (DCGM_FI_DEV_FB_USED{{namespace="{ns}"}} / '
        '(DCGM_FI_DEV_FB_USED{{namespace="{ns}"}} + DCGM_FI_DEV_FB_FREE{{namespace="{ns}"}}))', False,
        "share of the GPU's memory in use (NVIDIA's DCGM exporter; absent on CPU)",
    ),
    # kube-state-metrics (kube-prometheus-stack's): where pods run and whether nodes are Ready.
    "node_ready": _Query('max by (node) (kube_node_status_condition{{condition="Ready",status="true"}})', False,
                         "1 while the node reports Ready"),
    "pod_node": _Query('max by (pod, node) (kube_pod_info{{namespace="{ns}"}})', False, "the node a pod runs on"),
    "pod_ready": _Query('max by (pod) (kube_pod_status_ready{{namespace="{ns}",condition="true"}})', False,
                        "1 while the pod is Ready (in the load balancer)"),
    "pod_created": _Query('max by (pod) (kube_pod_created{{namespace="{ns}"}})', False,
                          "when the pod was created (Unix seconds)"),
}  # fmt: skip
"""What a diagnosis reads, by name."""


def queries(namespace: str) -> dict[str, str]:
    """Each query's PromQL for the service in `namespace`."""
    return {name: query.expr.format(ns=namespace) for name, query in QUERIES.items()}


class RecordingError(ValueError):
    """A recording cannot be read: the message names the file or field and what was expected."""


@dataclass(frozen=True)
class Series:
    """One series of a query: its identifying labels and (Unix time, value) samples in time order."""

    labels: Mapping[str, str]
    samples: tuple[tuple[float, float], ...]

    def at(self, when: float) -> float | None:
        """The last value at or before `when` (None before the first sample)."""
        found = None
        for t, value in self.samples:
            if t > when:
                break
            found = value
        return found

    def between(self, start: float, end: float) -> list[float]:
        return [value for t, value in self.samples if start <= t <= end]

    def increase(self, start: float, end: float, *, from_zero: bool = False) -> float | None:
        """How much a counter grew over [start, end], counter resets included (a restarted process
        counts from 0). With `from_zero` a series that begins inside the window counts from 0 (a pod
        that started there); otherwise from its first sample. None when no sample is in the window."""
        inside = [(t, v) for t, v in self.samples if t <= end]
        if not inside or inside[-1][0] < start:
            return None
        before = [v for t, v in inside if t <= start]
        previous = before[-1] if before else (0.0 if from_zero else inside[0][1])
        grown = 0.0
        for t, value in inside:
            if t <= start:
                continue
            grown += value - previous if value >= previous else value
            previous = value
        return grown

    @property
    def first(self) -> float:
        return self.samples[0][0]

    @property
    def last(self) -> float:
        return self.samples[-1][0]


@dataclass(frozen=True)
class Recording:
    """What the queries returned over [start, end] at `step` seconds, for the service in `namespace`."""

    namespace: str
    start: float
    end: float
    step: float
    series: Mapping[str, tuple[Series, ...]]
    """By query name; a query Prometheus had nothing for has an empty tuple; one not asked is absent."""
    slo_seconds: float | None = None
    """The service's p99 SLO, when known (the targets document's, a drill's calibration)."""
    notes: Mapping[str, Any] = field(default_factory=dict)
    """Where it came from (the drill's fault and when it struck, the Prometheus URL, ...)."""

    def of(self, name: str) -> tuple[Series, ...]:
        return self.series.get(name, ())

    def has(self, name: str) -> bool:
        return bool(self.series.get(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace, "start": self.start, "end": self.end, "step": self.step,
            "slo_seconds": self.slo_seconds, "notes": dict(self.notes),
            "queries": {name: QUERIES[name].expr.format(ns=self.namespace) for name in self.series if name in QUERIES},
            "series": {
                name: [{"metric": dict(s.labels), "values": [[t, _number(v)] for t, v in s.samples]} for s in found]
                for name, found in self.series.items()
            },
        }  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "recording") -> Recording:
        if not isinstance(raw, dict):
            raise RecordingError(f"{source}: expected an object with namespace, start, end, step and series")
        try:
            namespace, start, end, step = (
                str(raw["namespace"]),
                float(raw["start"]),
                float(raw["end"]),
                float(raw["step"]),
            )
            found = raw["series"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(
                f"{source}: {exc.__class__.__name__} {exc}: needs namespace, start, end, step, series"
            ) from None
        if not isinstance(found, dict):
            raise RecordingError(f"{source}: series must be an object of query name to Prometheus range results")
        slo = raw.get("slo_seconds")
        return cls(
            namespace=namespace, start=start, end=end, step=step,
            series={name: parse_range_result(result, source=f"{source}: series {name}")
                    for name, result in found.items()},
            slo_seconds=None if slo is None else float(slo), notes=dict(raw.get("notes") or {}),
        )  # fmt: skip

    def write(self, path: Path) -> None:
        """As JSON (gzipped when the name ends in .gz), atomically."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        partial = path.with_name(f".{path.name}.partial")
        if path.suffix == ".gz":
            partial.write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            partial.write_text(text)
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> Recording:
        """A recording, or a drill's report that holds one under `recording`."""
        try:
            data = path.read_bytes()
            raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
        except FileNotFoundError:
            raise RecordingError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
            raise RecordingError(f"{path}: not JSON ({exc})") from None
        if isinstance(raw, dict) and "series" not in raw and "recording" in raw:
            if raw["recording"] is None:
                raise RecordingError(f"{path}: the drill's Prometheus answered no query at its end: nothing recorded")
            raw = raw["recording"]
        return cls.from_dict(raw, source=str(path))


def _number(value: float) -> float | str:
    # JSON has no NaN or infinities; Prometheus's API writes them as strings, and so do we.
    return value if math.isfinite(value) else str(value).replace("inf", "Inf").replace("nan", "NaN")


def parse_range_result(result: Any, *, source: str) -> tuple[Series, ...]:
    """Prometheus's `query_range` result (a matrix) as series."""
    if not isinstance(result, list):
        raise RecordingError(f"{source}: expected a list of {{metric, values}}")
    parsed = []
    for item in result:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items() if k != "__name__"}
            samples = tuple((float(t), float(v)) for t, v in item["values"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordingError(
                f"{source}: a series is not {{metric: {{...}}, values: [[t, v], ...]}} ({exc})"
            ) from None
        if samples:
            parsed.append(Series(labels, tuple(sorted(samples))))
    return tuple(parsed)


QueryRange = Callable[[str, float, float, float], Any]
"""(PromQL, start, end, step) -> the API's `data.result` for it."""


def record(
    query_range: QueryRange,
    *,
    namespace: str,
    start: float,
    end: float,
    step: float,
    names: Iterable[str] = QUERIES,
    slo_seconds: float | None = None,
    notes: Mapping[str, Any] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> Recording:
    """Ask each query over [start, end]. A query that fails is left out (and passed to `on_error`):
    the diagnosis then says what it could not check, rather than nothing at all."""
    found: dict[str, tuple[Series, ...]] = {}
    for name in names:
        expr = QUERIES[name].expr.format(ns=namespace)
        try:
            found[name] = parse_range_result(query_range(expr, start, end, step), source=f"query {name}")
        except Exception as exc:  # noqa: BLE001 (one missing query must not lose the others)
            if on_error is not None:
                on_error(name, exc)
    return Recording(namespace, start, end, step, found, slo_seconds, dict(notes or {}))
