"""kube-state-metrics, played: the lab's Kubernetes objects as the series the cluster's Prometheus
scrapes from kube-prometheus-stack's kube-state-metrics, so alert rules and `peakguard diagnose`
read the lab as they read a cluster.

Only what peakguard reads, named and labelled as kube-state-metrics v2 exposes them
(docs/metrics/workload/pod-metrics.md and cluster/node-metrics.md in kubernetes/kube-state-metrics):

- `kube_node_status_condition{node, condition, status}`: one series per status (true, false,
  unknown) of each condition, 1 for the current one;
- `kube_pod_info{namespace, pod, node, host_ip, pod_ip, uid, created_by_kind, created_by_name,
  priority_class, host_network}`: 1 per pod (node empty while Pending);
- `kube_pod_status_ready{namespace, pod, uid, condition}`: as the node's, for the pod's Ready condition;
- `kube_pod_created{namespace, pod, uid}`: its creationTimestamp, Unix seconds.

`with KubeStateMetrics(store) as metrics:` serves them at `metrics.url + "/metrics"`, read from the
store at each scrape.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from lab.kube_api import ObjectStore
from model_service.service_process import free_port

__all__ = ["KubeStateMetrics"]

_STATUSES = ("true", "false", "unknown")


def _condition(obj: dict[str, Any], kind: str) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status", "Unknown")).lower()
    return "unknown"


def _unix(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


class _Objects(Collector):
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nodes = GaugeMetricFamily("kube_node_status_condition", "The condition of a cluster node.",
                                  labels=["node", "condition", "status"])  # fmt: skip
        for node in self.store.list("nodes"):
            name = node["metadata"]["name"]
            current = _condition(node, "Ready")
            for status in _STATUSES:
                nodes.add_metric([name, "Ready", status], 1.0 if status == current else 0.0)
        yield nodes
        info = GaugeMetricFamily("kube_pod_info", "Information about pod.",
                                 labels=["namespace", "pod", "uid", "node", "host_ip", "pod_ip", "created_by_kind",
                                         "created_by_name", "priority_class", "host_network"])  # fmt: skip
        ready = GaugeMetricFamily("kube_pod_status_ready", "Describes whether the pod is ready to serve requests.",
                                  labels=["namespace", "pod", "uid", "condition"])  # fmt: skip
        created = GaugeMetricFamily("kube_pod_created", "Unix creation timestamp",
                                    labels=["namespace", "pod", "uid"])  # fmt: skip
        for pod in self.store.list("pods"):
            meta, spec, state = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            key = [meta.get("namespace", ""), meta["name"], meta.get("uid", "")]
            owner: dict[str, Any] = next(iter(meta.get("ownerReferences") or []), {})
            info.add_metric([*key, spec.get("nodeName", ""), state.get("hostIP", ""), state.get("podIP", ""),
                             owner.get("kind", ""), owner.get("name", ""), spec.get("priorityClassName", ""),
                             str(bool(spec.get("hostNetwork", False))).lower()], 1.0)  # fmt: skip
            current = _condition(pod, "Ready")
            for state in _STATUSES:
                ready.add_metric([*key, state], 1.0 if state == current else 0.0)
            if (when := _unix(meta.get("creationTimestamp"))) is not None:
                created.add_metric(key, when)
        yield from (info, ready, created)


class KubeStateMetrics:
    """kube-state-metrics' view of `store`, served on 127.0.0.1 while the block runs."""

    def __init__(self, store: ObjectStore, *, port: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Objects(store))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def __enter__(self) -> KubeStateMetrics:
        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        return self

    def __exit__(self, *_: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
