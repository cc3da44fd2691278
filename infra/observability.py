"""What watches the model service: the scrape, the alerts (each naming its runbook), the dashboard.

The alerts cover the seed's twelve signals: QPS, p50 and p99 latency, error rate, shed rate, queue
depth, batch size, GPU utilisation and memory (DCGM), OOM kills, pod restarts, node NotReady and
the HPA at its maximum. Each carries a `runbook` annotation (the peakguard runbook to run), the
command that plans it and the runbook's source, and links the reviewed incidents that showed its
signal (`incidents/`), so the page tells the on-call what to do and what happened last time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import pulumi
import pulumi_kubernetes as k8s

from infra.alerts import ALERTS, RUNBOOKS, Alert, alert_rules
from infra.config import ModelServiceConfig

__all__ = ["ALERTS", "RUNBOOKS", "Alert", "Observability", "ObservabilityArgs", "alert_rules", "dashboard_json"]

# The alerts themselves are Pulumi-free (infra/alerts.py): the drill evaluates the same rules.


def dashboard_json() -> str:
    """The Grafana dashboard shipped in `infra/dashboards/`."""
    return resources.files("infra").joinpath("dashboards/model-service.json").read_text()


@dataclass(frozen=True)
class ObservabilityArgs:
    env: str
    config: ModelServiceConfig
    provider: k8s.Provider
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """kube-prometheus-stack, whose CRDs these objects are."""
    labels: Mapping[str, str] = field(default_factory=dict)
    incidents: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Signal -> the reviewed incident documents that showed it (infra/incident_index.py): each
    alert links them."""


class Observability(pulumi.ComponentResource):
    """The PodMonitor, the PrometheusRule and the dashboard ConfigMap of the model service."""

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:Observability", name, None, opts)
        namespace = args.config.namespace
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        labels = {"app.kubernetes.io/part-of": "peakguard", **args.labels}

        k8s.apiextensions.CustomResource(
            f"{name}-podmonitor",
            api_version="monitoring.coreos.com/v1",
            kind="PodMonitor",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="model-service", namespace=namespace, labels=labels),
            spec={
                "selector": {"matchLabels": {"app.kubernetes.io/name": "model-service"}},
                # Every 5 s: the HPA's in-flight metric must not be a minute old.
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "5s"}],
            },
            opts=child,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-alerts",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="model-service", namespace=namespace, labels=labels),
            spec={
                "groups": [
                    {
                        "name": "peakguard.model-service",
                        "rules": alert_rules(
                            args.env, namespace, args.config.slo_p99_milliseconds / 1000, incidents=args.incidents
                        ),
                    }
                ]
            },
            opts=child,
        )
        # The Grafana sidecar loads every ConfigMap with this label, in any namespace.
        dashboard = dashboard_json()
        json.loads(dashboard)  # a broken file fails the preview, not Grafana at 3 a.m.
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="model-service-dashboard", namespace=namespace, labels={**labels, "grafana_dashboard": "1"}
            ),
            data={"model-service.json": dashboard},
            opts=child,
        )
        self.register_outputs({})
