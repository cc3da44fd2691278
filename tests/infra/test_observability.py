"""Alerts, dashboard and scrape of the model service, checked against what the service really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from infra import observability
from infra.offline import OfflineRun, Registration
from model_service.metrics import OUTCOMES, ServiceMetrics

PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
POD_MONITOR = "kubernetes:monitoring.coreos.com/v1:PodMonitor"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"

# The seed's signals, each of which must page someone.
SIGNALS = {
    "qps",
    "p50 latency",
    "p99 latency",
    "error rate",
    "shed rate",
    "queue depth",
    "batch size",
    "GPU utilisation",
    "GPU memory",
    "OOM kills",
    "pod restarts",
    "node NotReady",
    "HPA at max",
}
_OUR_METRIC = re.compile(r"\bpeakguard_[a-z0-9_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_PAIRS = {")": "(", "}": "{", "]": "["}


def _exported_series() -> set[str]:
    """The series names the model service's /metrics can carry."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def _rules(run: OfflineRun) -> list[dict[str, Any]]:
    (rule,) = run.of_type(PROMETHEUS_RULE)
    return [r for group in rule.inputs["spec"]["groups"] for r in group["rules"]]


def _dashboard_config_map(run: OfflineRun) -> Registration:
    (found,) = [c for c in run.of_type(CONFIG_MAP) if c.inputs["metadata"]["name"] == "model-service-dashboard"]
    return found


def _dashboard_exprs(dashboard: Any) -> Iterator[str]:
    if isinstance(dashboard, dict):
        for key, value in dashboard.items():
            if key == "expr":
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from _dashboard_exprs(item)


def _balanced(expr: str) -> bool:
    stack = []
    for char in _STRING.sub('""', expr):
        if char in "({[":
            stack.append(char)
        elif char in _PAIRS and (not stack or stack.pop() != _PAIRS[char]):
            return False
    return not stack


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(observability.dashboard_json())
    return loaded


# --- Alerts ------------------------------------------------------------------------------


def test_alerts_cover_every_signal(run: OfflineRun) -> None:
    covered = {rule["annotations"]["signal"] for rule in _rules(run)}
    assert covered >= SIGNALS, SIGNALS - covered
    assert {alert.signal for alert in observability.ALERTS} >= SIGNALS


def test_every_alert_names_a_runbook_and_the_command_that_plans_it(run: OfflineRun) -> None:
    for rule in _rules(run):
        annotations = rule["annotations"]
        assert annotations["runbook"] in observability.RUNBOOKS, rule["alert"]
        assert (
            annotations["runbook_command"] == f"peakguard runbook plan {annotations['runbook']} --env {run.config.env}"
        )
        assert annotations["summary"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["labels"]["env"] == run.config.env


def test_alert_exprs_are_rendered_and_balanced(run: OfflineRun) -> None:
    namespace = run.config.kubernetes.model_service.namespace
    for rule in _rules(run):
        expr = rule["expr"]
        assert _balanced(expr), f"{rule['alert']}: unbalanced brackets in {expr}"
        assert "{ns}" not in expr and "{slo}" not in expr, rule["alert"]
        assert "{{" not in expr and "}}" not in expr, rule["alert"]
        for selector in re.findall(r'namespace="([^"]*)"', expr):
            assert selector == namespace, rule["alert"]


def test_p99_alert_fires_above_the_configured_slo(run: OfflineRun) -> None:
    slo = run.config.kubernetes.model_service.slo_p99_milliseconds / 1000
    (p99,) = [r for r in _rules(run) if r["annotations"]["signal"] == "p99 latency"]
    threshold = float(p99["expr"].rsplit(">", 1)[1])
    assert threshold == pytest.approx(slo)
    assert p99["labels"]["severity"] == "critical"


def test_alerts_use_only_metrics_the_service_exports(run: OfflineRun) -> None:
    exported = _exported_series()
    used = {name for rule in _rules(run) for name in _OUR_METRIC.findall(rule["expr"])}
    assert used, "no alert reads a peakguard_* metric"
    assert used <= exported, used - exported


def test_scaled_objects_query_a_metric_the_service_exports(run: OfflineRun) -> None:
    exported = _exported_series()
    for scaled in run.of_type(SCALED_OBJECT):
        for trigger in scaled.inputs["spec"]["triggers"]:
            used = set(_OUR_METRIC.findall(trigger["metadata"]["query"]))
            assert used and used <= exported, used - exported


# --- Dashboard ---------------------------------------------------------------------------


def test_dashboard_uses_only_metrics_the_service_exports(dashboard: dict[str, Any]) -> None:
    exported = _exported_series()
    exprs = list(_dashboard_exprs(dashboard))
    used = {name for expr in exprs for name in _OUR_METRIC.findall(expr)}

    assert used, "the dashboard reads no peakguard_* metric"
    assert used <= exported, used - exported
    for expr in exprs:
        assert _balanced(expr), expr


def test_dashboard_has_per_stage_and_per_layer_latency(dashboard: dict[str, Any]) -> None:
    exprs = list(_dashboard_exprs(dashboard))
    by_stage = [e for e in exprs if "peakguard_stage_seconds" in e and re.search(r"by \([^)]*\bstage\b", e)]
    by_layer = [e for e in exprs if "peakguard_layer_seconds" in e and re.search(r"by \([^)]*\blayer\b", e)]
    assert by_stage, "no per-stage latency panel"
    assert by_layer, "no per-layer latency panel"


def test_dashboard_config_map_is_found_by_the_grafana_sidecar(run: OfflineRun) -> None:
    config_map = _dashboard_config_map(run)
    (stack,) = [r for r in run.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "kube-prometheus-stack"]
    sidecar = stack.inputs["values"]["grafana"]["sidecar"]["dashboards"]

    assert config_map.inputs["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sidecar["label"] == "grafana_dashboard"
    assert sidecar["searchNamespace"] == "ALL"
    assert json.loads(config_map.inputs["data"]["model-service.json"]) == json.loads(observability.dashboard_json())


# --- Scrape ------------------------------------------------------------------------------


def test_pod_monitor_scrapes_every_variant_on_the_named_port(run: OfflineRun) -> None:
    (monitor,) = run.of_type(POD_MONITOR)
    selector = monitor.inputs["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor.inputs["spec"]["podMetricsEndpoints"]

    assert endpoint["path"] == "/metrics"
    for deployment in run.of_type(DEPLOYMENT):
        template = deployment.inputs["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items(), deployment.name
        port_names = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in port_names, deployment.name


# --- The metrics contract (model_service/metrics.py) ------------------------------------------
# Every POST /v1/intent response is counted once in peakguard_request_seconds by outcome; a rate is
# one outcome over that same count. infra may not import model_service, so these tests hold the two
# together.

_OUTCOME_SELECTOR = re.compile(r'\boutcome\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _rule(run: OfflineRun, signal: str) -> dict[str, Any]:
    (found,) = [r for r in _rules(run) if r["annotations"]["signal"] == signal]
    return found


def _ratio(expr: str) -> tuple[str, str, float]:
    """numerator / denominator > threshold, split."""
    ratio, threshold = expr.rsplit(" > ", 1)
    numerator, denominator = ratio.split(" / ")
    return numerator, denominator, float(threshold)


def _all_exprs(run: OfflineRun, dashboard: dict[str, Any]) -> list[str]:
    return [rule["expr"] for rule in _rules(run)] + list(_dashboard_exprs(dashboard))


def test_outcomes_selected_are_exactly_those_the_service_sets(run: OfflineRun, dashboard: dict[str, Any]) -> None:
    selectors = [m for expr in _all_exprs(run, dashboard) for m in _OUTCOME_SELECTOR.findall(expr)]
    assert selectors
    # An exact match, never a regex or a negation: a new outcome must not slip into a rate unseen.
    assert {op for op, _ in selectors} == {"="}
    assert {value for _, value in selectors} <= set(OUTCOMES)


def test_error_rate_alert_is_server_errors_over_all_responses(run: OfflineRun) -> None:
    namespace = run.config.kubernetes.model_service.namespace
    rule = _rule(run, "error rate")
    numerator, denominator, threshold = _ratio(rule["expr"])

    assert numerator == (
        f'sum(rate(peakguard_request_seconds_count{{namespace="{namespace}",outcome="server_error"}}[5m]))'
    )
    assert denominator == f'sum(rate(peakguard_request_seconds_count{{namespace="{namespace}"}}[5m]))'
    assert threshold == 0.01
    assert rule["labels"]["severity"] == "critical"
    assert "server errors" in rule["annotations"]["summary"]


def test_shed_rate_alert_is_sheds_over_all_responses(run: OfflineRun) -> None:
    namespace = run.config.kubernetes.model_service.namespace
    numerator, denominator, _ = _ratio(_rule(run, "shed rate")["expr"])

    assert numerator == f'sum(rate(peakguard_request_seconds_count{{namespace="{namespace}",outcome="shed"}}[5m]))'
    assert denominator == f'sum(rate(peakguard_request_seconds_count{{namespace="{namespace}"}}[5m]))'


def test_client_errors_page_no_one(run: OfflineRun) -> None:
    # errors_total counts client errors too (by kind, for the dashboard): no alert may read it.
    for rule in _rules(run):
        assert "client_error" not in rule["expr"], rule["alert"]
        assert "peakguard_errors_total" not in rule["expr"], rule["alert"]


def test_latency_is_of_answered_requests_only(run: OfflineRun, dashboard: dict[str, Any]) -> None:
    latency = [expr for expr in _all_exprs(run, dashboard) if "peakguard_request_seconds_bucket" in expr]
    assert {_rule(run, signal)["expr"] for signal in ("p50 latency", "p99 latency")} <= set(latency)
    for expr in latency:
        assert _OUTCOME_SELECTOR.findall(expr) == [("=", "answered")], expr
