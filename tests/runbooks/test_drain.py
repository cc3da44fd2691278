"""Draining a node through the real Kubernetes client against the local API (whose Eviction
subresource honours PodDisruptionBudgets): DaemonSet, mirror and finished pods stay; a budget's
refusal is named and told apart from throttling; the deadline stops the drain, forcing nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lab.kube_api import ApiStatus, LocalKubernetes
from runbooks.errors import RunbookError
from runbooks.nodes.drain import DrainBlockedError, drain_node
from runbooks.ports.cluster import KubernetesCluster

READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


@pytest.fixture(scope="module")
def kube() -> Iterator[LocalKubernetes]:
    with LocalKubernetes() as served:
        yield served


@pytest.fixture
def cluster(kube: LocalKubernetes) -> KubernetesCluster:
    return KubernetesCluster.from_url(kube.url)


@pytest.fixture
def node(kube: LocalKubernetes) -> str:
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    kube.store.create("nodes", None, {"metadata": {"name": name}, "spec": {}})
    return name


def _pod(kube: LocalKubernetes, namespace: str, name: str, node: str, *, owner: str = "ReplicaSet",
         labels: dict[str, str] | None = None, status: dict[str, Any] | None = None,
         annotations: dict[str, str] | None = None) -> None:  # fmt: skip
    owners = [{"apiVersion": "apps/v1", "kind": owner, "name": f"{name}-owner", "uid": uuid.uuid4().hex,
               "controller": True}] if owner else []  # fmt: skip
    kube.store.create("pods", namespace, {
        "metadata": {"name": name, "labels": labels or {}, "ownerReferences": owners, "annotations": annotations or {}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "i:1"}]},
        "status": status or READY,
    })  # fmt: skip


def _service(kube: LocalKubernetes, namespace: str, node: str, *, replicas: int, max_unavailable: int) -> None:
    """`replicas` Ready pods of one Deployment, all on `node`, guarded by a budget."""
    labels = {"app": "model-service"}
    kube.store.create("deployments", namespace, {"metadata": {"name": "model-service"},
                      "spec": {"replicas": replicas, "selector": {"matchLabels": labels}}})  # fmt: skip
    kube.store.create("poddisruptionbudgets", namespace, {"metadata": {"name": "model-service-pdb"},
                      "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": labels}}})  # fmt: skip
    for i in range(replicas):
        _pod(kube, namespace, f"model-service-{i}", node, labels=labels)


def test_movable_pods_are_evicted_and_the_rest_stay(
    kube: LocalKubernetes, cluster: KubernetesCluster, node: str
) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    _service(kube, ns, node, replicas=3, max_unavailable=3)
    _pod(kube, ns, "efa-device-plugin-x", node, owner="DaemonSet")
    _pod(kube, ns, "kube-proxy-static", node, owner="", annotations={"kubernetes.io/config.mirror": "abc"})
    _pod(kube, ns, "smoke-test", node, owner="Job", status={"phase": "Succeeded"})

    report = drain_node(cluster, node, deadline_seconds=10, poll_seconds=0.05)

    assert sorted(report.evicted) == [f"{ns}/model-service-{i}" for i in range(3)]
    assert sorted(s.split(":")[0] for s in report.skipped) == [f"{ns}/efa-device-plugin-x", f"{ns}/kube-proxy-static",
                                                               f"{ns}/smoke-test"]  # fmt: skip
    left = {p.name for p in cluster.pods_on(node)}
    assert left == {"efa-device-plugin-x", "kube-proxy-static", "smoke-test"}


def test_a_budget_block_stops_at_the_deadline_naming_the_budget(
    kube: LocalKubernetes, cluster: KubernetesCluster, node: str
) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    _service(kube, ns, node, replicas=3, max_unavailable=1)

    with pytest.raises(DrainBlockedError) as blocked:
        drain_node(cluster, node, deadline_seconds=0.5, poll_seconds=0.05)

    message = str(blocked.value)
    assert f"drain of {node} stopped at its 0.5 s deadline: blocked by PodDisruptionBudget model-service-pdb" in message
    assert "Nothing was forced" in message
    assert len(blocked.value.blocked) == 2, "one pod may go (maxUnavailable 1), the other two are held"
    assert len(cluster.pods_on(node)) == 2, "nothing deleted around the budget"


def test_throttling_is_waited_out_and_not_blamed_on_a_budget(
    kube: LocalKubernetes, cluster: KubernetesCluster, node: str
) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    _service(kube, ns, node, replicas=1, max_unavailable=1)
    kube.store.faults[("POST", "pods")] = [ApiStatus(429, "TooManyRequests", "Too many requests, please try again")]
    try:
        report = drain_node(cluster, node, deadline_seconds=10, poll_seconds=0.05)
    finally:
        kube.store.faults.pop(("POST", "pods"), None)
    assert report.throttled == 1 and report.budget_refusals == 0
    assert report.evicted == [f"{ns}/model-service-0"]


def test_cordon_is_marked_and_only_the_marking_run_lifts_it(cluster: KubernetesCluster, node: str) -> None:
    cluster.cordon(node, "run-1")
    assert cluster.cordon_mark(node) == (True, "run-1")
    with pytest.raises(RunbookError, match="does not carry run run-2's cordon"):
        cluster.uncordon(node, "run-2")
    cluster.uncordon(node, "run-1")
    assert cluster.cordon_mark(node) == (False, None)
