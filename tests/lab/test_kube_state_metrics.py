"""The lab's kube-state-metrics: the store's nodes and pods as kube-state-metrics names them, over HTTP."""

from __future__ import annotations

import calendar
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lab.kube_api import ObjectStore
from lab.kube_state_metrics import KubeStateMetrics

MERGE = "application/merge-patch+json"


def _samples(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_nodes_and_pods_are_exposed_as_kube_state_metrics_names_them_and_follow_the_store() -> None:
    store = ObjectStore()
    store.create("nodes", None, {"metadata": {"name": "node-a"}})
    store.patch("nodes", None, "node-a", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                content_type=MERGE, only_status=True)  # fmt: skip
    store.create(
        "pods", "peakguard", {"metadata": {"name": "p-1", "namespace": "peakguard"}, "spec": {"nodeName": "node-a"}}
    )
    store.create("pods", "peakguard", {"metadata": {"name": "p-2", "namespace": "peakguard"}, "spec": {}})
    store.patch("pods", "peakguard", "p-1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                content_type=MERGE, only_status=True)  # fmt: skip

    with KubeStateMetrics(store) as metrics:
        before = _samples(metrics.url)
        store.patch("nodes", None, "node-a", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                    content_type=MERGE, only_status=True)  # fmt: skip
        after = _samples(metrics.url)

    def value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
        (found,) = [v for sample_labels, v in samples if labels.items() <= sample_labels.items()]
        return found

    conditions = before["kube_node_status_condition"]
    assert value(conditions, node="node-a", condition="Ready", status="true") == 1.0
    assert value(conditions, node="node-a", condition="Ready", status="false") == 0.0
    assert value(after["kube_node_status_condition"], node="node-a", status="true") == 0.0
    assert value(after["kube_node_status_condition"], node="node-a", status="false") == 1.0
    assert value(before["kube_pod_info"], pod="p-1", node="node-a", namespace="peakguard") == 1.0
    assert value(before["kube_pod_info"], pod="p-2", node="") == 1.0  # Pending: no node yet
    assert value(before["kube_pod_status_ready"], pod="p-1", condition="true") == 1.0
    assert value(before["kube_pod_status_ready"], pod="p-2", condition="true") == 0.0
    created = value(before["kube_pod_created"], pod="p-1")
    assert abs(created - calendar.timegm(time.gmtime())) < 5
