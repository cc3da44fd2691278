"""The model service's alerts, each naming the runbook to run: one definition for the cluster's
PrometheusRule (infra/observability.py) and for the local drill, which evaluates the same rules with
a real Prometheus over the lab's pods. Pulumi-free, so the lab may import it.

The alerts cover the seed's twelve signals: QPS, p50 and p99 latency, error rate, shed rate, queue
depth, batch size, GPU utilisation and memory (DCGM), OOM kills, pod restarts, node NotReady and
the HPA at its maximum. The labels they select are the model service's metrics contract
(model_service/metrics.py): answered latency, server errors and sheds over every response.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ALERTS", "RUNBOOKS", "Alert", "alert_rules", "detection_bound", "scaled_duration"]

RUNBOOKS = ("emergency-stop", "rebuild", "rolling-upgrade", "predictive-scale", "chaos-drill")
"""The peakguard runbooks an alert may point at (`peakguard runbook list`; shared/DESIGN.md)."""

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Alert:
    name: str
    signal: str
    """Which of the seed's signals it watches."""
    expr: str
    """PromQL; `{ns}` is the model-service namespace, `{slo}` the p99 SLO in seconds."""
    for_: str
    severity: Severity
    runbook: str
    summary: str


# Every POST /v1/intent response is counted once in peakguard_request_seconds, labelled by outcome
# (answered, shed, client_error, server_error) and served_by: the contract in model_service/metrics.py
# (this package may not import it; tests/infra pins the labels to it). So each rate below is one
# outcome over the same count, and client errors, the caller's fault, are in no numerator.
_REQUESTS = 'sum(rate(peakguard_request_seconds_count{{namespace="{ns}"}}[2m]))'
_SERVER_ERRORS = 'sum(rate(peakguard_request_seconds_count{{namespace="{ns}",outcome="server_error"}}[5m]))'
_SHED = 'sum(rate(peakguard_request_seconds_count{{namespace="{ns}",outcome="shed"}}[5m]))'
_ANSWERED_LATENCY = 'sum by (le) (rate(peakguard_request_seconds_bucket{{namespace="{ns}",outcome="answered"}}[2m]))'
ALERTS: tuple[Alert, ...] = (
    Alert(
        "ModelServiceTrafficSurge", "qps",
        f"{_REQUESTS} > 3 * {_REQUESTS.replace('[2m]', '[2m] offset 1h')}",
        "2m", "warning", "emergency-stop",
        "Requests per second are more than 3x what they were an hour ago.",
    ),
    Alert(
        "ModelServiceP50LatencyHigh", "p50 latency",
        f"histogram_quantile(0.5, {_ANSWERED_LATENCY}) > {{slo}} / 2",
        "5m", "warning", "emergency-stop",
        "Median latency is above half the p99 SLO: the whole fleet is slowing, not a tail.",
    ),
    Alert(
        "ModelServiceP99LatencyHigh", "p99 latency",
        f"histogram_quantile(0.99, {_ANSWERED_LATENCY}) > {{slo}}",
        "2m", "critical", "emergency-stop",
        "p99 latency is above the SLO.",
    ),
    Alert(
        "ModelServiceErrorRateHigh", "error rate",
        f'{_SERVER_ERRORS} / {_REQUESTS.replace("[2m]", "[5m]")} > 0.01',
        "2m", "critical", "emergency-stop",
        "More than 1% of responses are server errors (5xx other than sheds; client errors do not count).",
    ),
    Alert(
        "ModelServiceShedRateHigh", "shed rate",
        f'{_SHED} / {_REQUESTS.replace("[2m]", "[5m]")} > 0.05',
        "5m", "warning", "emergency-stop",
        "Admission control refuses more than 5% of requests: capacity is short.",
    ),
    Alert(
        "ModelServiceQueueDeep", "queue depth",
        'avg(peakguard_queue_depth{{namespace="{ns}"}}) > 64',
        "2m", "warning", "emergency-stop",
        "Requests are waiting for batches on average per pod beyond 64.",
    ),
    Alert(
        "ModelServiceBatchesFull", "batch size",
        'histogram_quantile(0.5, sum by (le) (rate(peakguard_batch_size_bucket{{namespace="{ns}"}}[5m]))) >= 120',
        "5m", "warning", "emergency-stop",
        "Half the batches are at the 128 ceiling: the GPUs are saturated.",
    ),
    Alert(
        "GpuUtilisationHigh", "GPU utilisation",
        "avg(DCGM_FI_DEV_GPU_UTIL) > 90",
        "10m", "warning", "emergency-stop",
        "GPUs average above 90% busy for 10 minutes.",
    ),
    Alert(
        "GpuMemoryNearlyFull", "GPU memory",
        "max(DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)) > 0.9",
        "5m", "critical", "emergency-stop",
        "A GPU's memory is over 90% used: the next large batch may run out (the seed's OOMs).",
    ),
    Alert(
        "ModelServiceOomKilled", "OOM kills",
        'max by (pod) (kube_pod_container_status_last_terminated_reason{{namespace="{ns}",reason="OOMKilled"}})'
        " * on (pod) group_left () max by (pod) "
        '(increase(kube_pod_container_status_restarts_total{{namespace="{ns}"}}[10m])) > 0',
        "0m", "critical", "emergency-stop",
        "A model-service container was OOM-killed in the last 10 minutes.",
    ),
    Alert(
        "ModelServicePodRestarting", "pod restarts",
        'increase(kube_pod_container_status_restarts_total{{namespace="{ns}"}}[15m]) > 2',
        "0m", "warning", "rebuild",
        "A model-service container restarted more than twice in 15 minutes.",
    ),
    Alert(
        "NodeNotReady", "node NotReady",
        'kube_node_status_condition{{condition="Ready",status="true"}} == 0',
        "2m", "critical", "rolling-upgrade",
        "A node has not been Ready for 2 minutes.",
    ),
    Alert(
        "ModelServiceHpaAtMax", "HPA at max",
        'kube_horizontalpodautoscaler_status_current_replicas{{namespace="{ns}"}}'
        ' >= kube_horizontalpodautoscaler_spec_max_replicas{{namespace="{ns}"}}',
        "5m", "critical", "emergency-stop",
        "The HPA is at its maximum: it cannot add replicas; raise the bounds or degrade.",
    ),
    Alert(
        "ModelServiceBreakerOpen", "circuit breaker",
        'max(peakguard_breaker_open{{namespace="{ns}"}}) == 1',
        "5m", "warning", "emergency-stop",
        "A pod's circuit breaker has served the light model for 5 minutes.",
    ),
)  # fmt: skip


def alert_rules(
    env: str,
    namespace: str,
    slo_seconds: float,
    *,
    time_scale: float = 1.0,
    incidents: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The alerting rules, rendered for one environment.

    `time_scale` (the drill's k, below 1) shortens every `for:`, range and offset alike, so a rule
    that waits 2 minutes over a 5-minute rate waits 2k over 5k: the same rule, faster, never dropped.
    `incidents` maps a signal to the incident documents that showed it (infra/incident_index.py):
    each alert's annotations link its runbook's source and those documents."""
    rules = []
    for alert in ALERTS:
        expr = alert.expr.format(ns=namespace, slo=f"{slo_seconds:g}")
        annotations = {
            "summary": alert.summary,
            "signal": alert.signal,
            "runbook": alert.runbook,
            "runbook_command": f"peakguard runbook plan {alert.runbook} --env {env}",
            "runbook_source": f"runbooks/library/{alert.runbook.replace('-', '_')}.py",
        }
        if links := (incidents or {}).get(alert.signal):
            annotations["incidents"] = " ".join(links)
        rules.append(
            {
                "alert": alert.name,
                "expr": expr if time_scale == 1.0 else _scaled_expr(expr, time_scale),
                "for": alert.for_ if time_scale == 1.0 else scaled_duration(alert.for_, time_scale),
                "labels": {"severity": alert.severity, "service": "model-service", "env": env},
                "annotations": annotations,
            }
        )
    return rules


_DURATION = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def scaled_duration(text: str, factor: float) -> str:
    """A Prometheus duration (`2m`, `1h`) times `factor`, in whole seconds (at least 1 s); `0m` stays 0."""
    total = sum(int(number) * _SECONDS[unit] for number, unit in _DURATION.findall(text))
    if total == 0:
        return "0s"
    return f"{max(1, round(total * factor))}s"


def detection_bound(
    name: str, *, time_scale: float = 1.0, evaluation_interval: float = 60.0, scrape_interval: float = 0.0
) -> float:
    """Seconds after a step change in its signal by which alert `name` fires at the latest: one scrape
    brings the change in, its longest range fills with it, its `for:` holds, and one more evaluation
    sees it (windows scaled by `time_scale`, as `alert_rules` scales them). A rule that compares with
    an `offset` past is bounded the same way: the past stays as it was."""
    alert = next((a for a in ALERTS if a.name == name), None)
    if alert is None:
        raise KeyError(f"no alert named {name!r}; the alerts are {', '.join(a.name for a in ALERTS)}")
    longest_range = max((_seconds(text) for text in re.findall(r"\[(\w+)\]", alert.expr)), default=0)
    if time_scale == 1.0:
        return _seconds(alert.for_) + longest_range + evaluation_interval + scrape_interval
    # As the rules get them: each window scaled and rounded to whole seconds.
    waits = _seconds(scaled_duration(alert.for_, time_scale))
    return waits + _seconds(scaled_duration(f"{longest_range}s", time_scale)) + evaluation_interval + scrape_interval


def _seconds(text: str) -> int:
    return sum(int(number) * _SECONDS[unit] for number, unit in _DURATION.findall(text))


def _scaled_expr(expr: str, factor: float) -> str:
    """Every range `[5m]` and `offset 1h` of an expression times `factor`."""
    expr = re.sub(r"\[(\w+)\]", lambda m: f"[{scaled_duration(m.group(1), factor)}]", expr)
    return re.sub(r"offset (\w+)", lambda m: f"offset {scaled_duration(m.group(1), factor)}", expr)
