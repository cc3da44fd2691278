"""EKS node groups played against moto (real boto3) and the local Kubernetes API (real client):
sizes flow both ways between a node group and its Auto Scaling group, instances become tainted
Nodes and then preflighted ones, a terminated instance takes its Node and pods with it; the played
scheduler keeps pods off cordoned, preflight-tainted and full nodes; an evicted pod leaves the
EndpointSlice before its backend stops, so traffic through the local load balancer never fails."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest
from kubernetes import client  # type: ignore[import-untyped, unused-ignore]

from infra.facts import GPU_TAINT, PREFLIGHT_TAINT
from infra.targets import ClusterTarget, NodeGroupTarget, TargetsDocument
from lab.aws import CREDENTIALS, moto_server
from lab.controllers import Controllers, Delays
from lab.kube_api import LocalKubernetes
from lab.lor_proxy import LorProxy
from lab.node_groups import NODE_GROUP_LABEL, NodeGroupDelays, NodeGroups
from runbooks.ports.cloud import instance_id_of

NS = "peakguard"
REGION = "us-west-2"
ZONE = "us-west-2a"
FAST = NodeGroupDelays(scaling=0.4, join=0.4, preflight=0.4, tick=0.05)
PODS = Delays(pod_start=0.2, readiness=0.1, config_sync=1.0, termination_grace=1.0, tick=0.05)
LABELS = {"app.kubernetes.io/name": "model-service", "peakguard.io/variant": "full"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


PORT = _free_port()
"""The container port every pod listens on, each on its own loopback address (as pods share one)."""


class TinyBackend:
    """A pod's container: answers 200 until stopped, taking a little time like a real request."""

    def __init__(self, address: str) -> None:
        self.address, self.port = address, PORT
        self.stopped = False

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(0.01)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((address, PORT), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def ready(self) -> bool:
        return not self.stopped

    def write_config(self, config_map: str, data: Mapping[str, str]) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, Any]]:
    with moto_server() as url:
        yield {"endpoint_url": url, "region_name": REGION, **CREDENTIALS}


@dataclass
class Fleet:
    """One cluster: a blue and a green node group of one pool in one AZ, their player, the API."""

    aws: dict[str, Any]
    kubernetes: LocalKubernetes
    targets: TargetsDocument
    player: NodeGroups

    @property
    def blue(self) -> NodeGroupTarget:
        return self.targets.node_groups[0]

    @property
    def green(self) -> NodeGroupTarget:
        return self.targets.node_groups[1]

    def eks(self) -> Any:
        return boto3.client("eks", **self.aws)

    def autoscaling(self) -> Any:
        return boto3.client("autoscaling", **self.aws)

    def resize(self, group: NodeGroupTarget, minimum: int, desired: int, maximum: int = 4) -> None:
        self.eks().update_nodegroup_config(clusterName=self.targets.cluster.name, nodegroupName=group.name,
                                           scalingConfig={"minSize": minimum, "desiredSize": desired,
                                                          "maxSize": maximum})  # fmt: skip

    def size(self, group: NodeGroupTarget) -> dict[str, int]:
        found = self.eks().describe_nodegroup(clusterName=self.targets.cluster.name, nodegroupName=group.name)
        return dict(found["nodegroup"]["scalingConfig"])

    def instances(self, group: NodeGroupTarget) -> list[str]:
        found = self.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=[group.autoscaling_group])
        return sorted(i["InstanceId"] for g in found["AutoScalingGroups"] for i in g["Instances"])

    def nodes(self, group: NodeGroupTarget) -> list[Any]:
        """The group's Nodes as the real client reads them."""
        configuration = client.Configuration()
        configuration.host = self.kubernetes.url
        core = client.CoreV1Api(client.ApiClient(configuration))
        return list(core.list_node(label_selector=f"{NODE_GROUP_LABEL}={group.name}").items)


def _targets(suffix: str) -> TargetsDocument:
    def group(generation: str, serving: bool) -> NodeGroupTarget:
        return NodeGroupTarget(pool="full", availability_zone=ZONE, name=f"gpu-full-{ZONE}-{generation}-{suffix}",
                               autoscaling_group=f"eks-gpu-full-{ZONE}-{generation}-{suffix}",
                               instance_type="g6e.12xlarge", generation=generation, serving=serving)  # fmt: skip

    cluster = ClusterTarget(name=f"peakguard-{suffix}", endpoint="https://example.invalid", region=REGION)
    return TargetsDocument(env="dev", cluster=cluster, node_groups=(group("blue", True), group("green", False)))


@pytest.fixture
def fleet(aws: dict[str, Any]) -> Iterator[Fleet]:
    targets = _targets(uuid.uuid4().hex[:6])
    eks = boto3.client("eks", **aws)
    eks.create_cluster(name=targets.cluster.name, roleArn="arn:aws:iam::123456789012:role/eks",
                       resourcesVpcConfig={"subnetIds": ["subnet-1"]})  # fmt: skip
    for group in targets.node_groups:
        eks.create_nodegroup(clusterName=targets.cluster.name, nodegroupName=group.name, subnets=["subnet-1"],
                             scalingConfig={"minSize": 0, "desiredSize": 0, "maxSize": 4},
                             nodeRole="arn:aws:iam::123456789012:role/node")  # fmt: skip
    with LocalKubernetes() as kubernetes, NodeGroups(kubernetes.store, targets, aws=aws, delays=FAST,
                                                     gpus_per_node=2) as player:  # fmt: skip
        yield Fleet(aws, kubernetes, targets, player)


def _wait(condition: Callable[[], bool], timeout: float = 15.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


def _taints(node: Any) -> set[str]:
    return {t.key for t in node.spec.taints or []}


# --- Node groups ----------------------------------------------------------------------------


def test_a_raised_desired_size_becomes_instances_then_tainted_nodes_then_preflighted_ones(fleet: Fleet) -> None:
    fleet.resize(fleet.green, 2, 2)
    raised = time.monotonic()

    _wait(lambda: len(fleet.instances(fleet.green)) == 2)
    assert time.monotonic() - raised >= FAST.scaling - 0.05, "the Auto Scaling group follows after EKS's update"
    _wait(lambda: len(fleet.nodes(fleet.green)) == 2)
    assert time.monotonic() - raised >= FAST.scaling + FAST.join - 0.05

    nodes = fleet.nodes(fleet.green)
    instances = fleet.instances(fleet.green)
    assert sorted(instance_id_of(n.spec.provider_id) for n in nodes) == instances
    for node in nodes:
        assert node.spec.provider_id.startswith(f"aws:///{ZONE}/i-")
        assert node.metadata.name.startswith("ip-") and node.metadata.name.endswith(f".{REGION}.compute.internal")
        labels = node.metadata.labels
        assert {k: labels[k] for k in (NODE_GROUP_LABEL, "peakguard.io/pool", "peakguard.io/generation",
                                       "topology.kubernetes.io/zone")} == {
            NODE_GROUP_LABEL: fleet.green.name, "peakguard.io/pool": "full", "peakguard.io/generation": "green",
            "topology.kubernetes.io/zone": ZONE}  # fmt: skip
        assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True")]
        assert node.status.allocatable == {"nvidia.com/gpu": "2"}
    # Registered with the startup taint, lifted by the preflight DaemonSet a little later.
    assert any(_taints(node) == {GPU_TAINT.key, PREFLIGHT_TAINT.key} for node in nodes)
    _wait(lambda: all(_taints(node) == {GPU_TAINT.key} for node in fleet.nodes(fleet.green)))
    result = json.loads(fleet.nodes(fleet.green)[0].metadata.annotations["peakguard.io/preflight-result"])
    assert result["ok"] is True
    assert fleet.nodes(fleet.blue) == [] and fleet.player.violations == []


def test_terminating_one_instance_with_decrement_removes_exactly_its_node_and_pods_and_lowers_the_group(
    fleet: Fleet,
) -> None:
    fleet.resize(fleet.blue, 0, 3)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 3)
    victim, *others = sorted(n.metadata.name for n in fleet.nodes(fleet.blue))
    store = fleet.kubernetes.store
    for node in (victim, others[0]):
        store.create("pods", NS, {"metadata": {"name": f"pod-on-{node}"}, "spec": {"nodeName": node},
                                  "status": {"phase": "Running"}})  # fmt: skip
    instance = instance_id_of(store.get("nodes", None, victim)["spec"]["providerID"])

    fleet.autoscaling().terminate_instance_in_auto_scaling_group(InstanceId=instance,
                                                                 ShouldDecrementDesiredCapacity=True)  # fmt: skip

    _wait(lambda: fleet.size(fleet.blue)["desiredSize"] == 2)
    _wait(lambda: sorted(n.metadata.name for n in fleet.nodes(fleet.blue)) == others)
    assert [p["metadata"]["name"] for p in store.list("pods", NS)] == [f"pod-on-{others[0]}"]
    time.sleep(FAST.scaling + 3 * FAST.tick)
    assert len(fleet.instances(fleet.blue)) == 2, "nothing relaunched it: EKS took the new size"
    assert fleet.size(fleet.blue) == {"minSize": 0, "desiredSize": 2, "maxSize": 4}
    assert fleet.player.violations == []


def test_the_cluster_autoscalers_set_desired_capacity_shows_in_the_node_group_and_brings_a_node(fleet: Fleet) -> None:
    # The Auto Scaling group exists once the player saw its node group.
    _wait(lambda: bool(fleet.autoscaling().describe_auto_scaling_groups(
        AutoScalingGroupNames=[fleet.blue.autoscaling_group])["AutoScalingGroups"]))  # fmt: skip

    fleet.autoscaling().set_desired_capacity(AutoScalingGroupName=fleet.blue.autoscaling_group, DesiredCapacity=1)

    _wait(lambda: fleet.size(fleet.blue) == {"minSize": 0, "desiredSize": 1, "maxSize": 4})
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 1)
    assert fleet.player.nodes(fleet.blue.name) == [fleet.nodes(fleet.blue)[0].metadata.name]


def test_terminating_below_the_minimum_is_reported_as_what_real_auto_scaling_refuses(fleet: Fleet) -> None:
    fleet.resize(fleet.blue, 2, 2)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 2)
    instance = fleet.instances(fleet.blue)[0]

    fleet.autoscaling().terminate_instance_in_auto_scaling_group(InstanceId=instance,
                                                                 ShouldDecrementDesiredCapacity=True)  # fmt: skip

    _wait(lambda: fleet.player.violations != [])
    assert "desired capacity 1 below its minimum 2" in fleet.player.violations[0]
    assert f"lower {fleet.blue.name}'s minSize first" in fleet.player.violations[0]


def test_a_scaling_config_update_still_pending_wins_over_the_auto_scaling_group(fleet: Fleet) -> None:
    # Lowering the minimum and terminating at once: EKS's update, applied after the terminate, sets
    # the old desired size again, and a replacement instance launches (as on AWS).
    fleet.resize(fleet.blue, 2, 2)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 2)
    before = fleet.instances(fleet.blue)

    fleet.resize(fleet.blue, 1, 2)
    fleet.autoscaling().terminate_instance_in_auto_scaling_group(InstanceId=before[0],
                                                                 ShouldDecrementDesiredCapacity=True)  # fmt: skip

    _wait(lambda: len(fleet.instances(fleet.blue)) == 2 and before[0] not in fleet.instances(fleet.blue))
    assert fleet.size(fleet.blue) == {"minSize": 1, "desiredSize": 2, "maxSize": 4}
    assert "desired capacity 1 below its minimum 2" in fleet.player.violations[0]


# --- Placement ------------------------------------------------------------------------------


def _model_service(store: Any, *, replicas: int, pre_stop: int = 15) -> None:
    """The model service's shape: tolerates the GPU taint (not the preflight one), one GPU a pod."""
    container = {"name": "model-service", "image": "x",
                 "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
                 "lifecycle": {"preStop": {"sleep": {"seconds": pre_stop}}}}  # fmt: skip
    store.create("deployments", NS, {"metadata": {"name": "model-service-full"}, "spec": {
        "selector": {"matchLabels": LABELS}, "template": {"metadata": {"labels": LABELS}, "spec": {
            "terminationGracePeriodSeconds": 60, "nodeSelector": {"peakguard.io/pool": "full"},
            "tolerations": [GPU_TAINT.toleration()], "containers": [container]}}}})  # fmt: skip
    store.create("horizontalpodautoscalers", NS, {"metadata": {"name": "model-service-full"}, "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-service-full"},
        "minReplicas": replicas, "maxReplicas": 8}})  # fmt: skip
    store.create("services", NS, {"metadata": {"name": "model-service"}, "spec": {"selector": LABELS}})


@contextlib.contextmanager
def _pods(store: Any, **kwargs: Any) -> Iterator[tuple[Controllers, list[TinyBackend]]]:
    started: list[TinyBackend] = []

    def factory(pod: str, template: Mapping[str, Any], address: str) -> TinyBackend:
        backend = TinyBackend(address)
        started.append(backend)
        return backend

    with Controllers(store, backends=factory, delays=PODS, **kwargs) as controllers:
        yield controllers, started


def _placement(store: Any) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in store.list("pods", NS)}


def test_pods_land_only_on_ready_uncordoned_preflighted_nodes_with_a_gpu_free(fleet: Fleet) -> None:
    store = fleet.kubernetes.store
    fleet.player.failing_preflight.add("green")
    fleet.resize(fleet.blue, 1, 1)
    fleet.resize(fleet.green, 1, 1)
    _wait(lambda: len(fleet.nodes(fleet.blue)) == 1 and len(fleet.nodes(fleet.green)) == 1)
    (blue,), (green,) = (n.metadata.name for n in fleet.nodes(fleet.blue)), (n.metadata.name for n in fleet.nodes(
        fleet.green))  # fmt: skip
    store.patch("nodes", None, blue, {"spec": {"unschedulable": True}}, content_type="application/merge-patch+json")

    with _pods(store, nodes=()) as (_, started):
        _model_service(store, replicas=3)
        # Blue is cordoned; green's preflight fails, so it keeps the startup taint: nowhere to go.
        _wait(lambda: len(_placement(store)) == 3)
        time.sleep(FAST.preflight * 3)
        assert set(_placement(store).values()) == {""} and started == []
        assert PREFLIGHT_TAINT.key in _taints(fleet.nodes(fleet.green)[0])
        assert json.loads(fleet.nodes(fleet.green)[0].metadata.annotations["peakguard.io/preflight-result"])[
            "failed"] == ["gpus"]  # fmt: skip

        store.patch("nodes", None, blue, {"spec": {"unschedulable": None}}, content_type="application/merge-patch+json")
        # Two GPUs on blue: two pods there, the third waits.
        _wait(lambda: sorted(_placement(store).values()) == ["", blue, blue])
        _wait(lambda: len(started) == 2)

        fleet.player.failing_preflight.clear()  # the gate checks again, passes, lifts the taint
        _wait(lambda: sorted(_placement(store).values()) == sorted([blue, blue, green]))
        _wait(lambda: len(started) == 3)


# --- Graceful termination -------------------------------------------------------------------


def test_an_evicted_pod_leaves_the_endpoint_slice_before_its_backend_stops_and_no_request_fails() -> None:
    with (
        LocalKubernetes() as kubernetes,
        _pods(kubernetes.store, node_labels={"peakguard.io/pool": "full"}) as (
            _,
            started,
        ),
    ):
        store = kubernetes.store
        _model_service(store, replicas=2)

        def ready() -> list[tuple[str, str]]:
            return sorted((e["targetRef"]["name"], f"http://{e['addresses'][0]}:{s['ports'][0]['port']}")
                          for s in store.list("endpointslices", NS) for e in s["endpoints"]
                          if e["conditions"]["ready"])  # fmt: skip

        _wait(lambda: len(ready()) == 2)
        configuration = client.Configuration()
        configuration.host = kubernetes.url
        core = client.CoreV1Api(client.ApiClient(configuration))
        failures: list[str] = []
        sent = [0]
        stop = threading.Event()

        with LorProxy(ready, refresh_interval=0.05) as proxy:

            def send() -> None:
                with httpx.Client(base_url=proxy.url, timeout=5) as http:
                    while not stop.is_set():
                        try:
                            status = http.get("/").status_code
                        except httpx.HTTPError as exc:
                            failures.append(repr(exc))
                        else:
                            sent[0] += 1
                            if status != 200:
                                failures.append(str(status))

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            victim, url = ready()[0]
            backend = next(b for b in started if url == f"http://{b.address}:{b.port}")
            evicted = time.monotonic()
            core.create_namespaced_pod_eviction(victim, NS, client.V1Eviction(
                metadata=client.V1ObjectMeta(name=victim, namespace=NS)))  # fmt: skip

            pod = store.get("pods", NS, victim)
            assert pod["metadata"]["deletionGracePeriodSeconds"] == 60, "terminating, with the pod's own grace"
            _wait(lambda: victim not in [name for name, _ in ready()])
            left_slice = time.monotonic() - evicted
            assert not backend.stopped, "still serving the requests in flight"
            # Evicting it again (a drain's retry) is accepted without consulting the budget.
            core.create_namespaced_pod_eviction(victim, NS, client.V1Eviction(
                metadata=client.V1ObjectMeta(name=victim, namespace=NS)))  # fmt: skip
            _wait(lambda: backend.stopped)
            stopped = time.monotonic() - evicted
            _wait(lambda: victim not in _placement(store))
            _wait(lambda: len(ready()) == 2)  # the replacement, made when the eviction began
            stop.set()
            sender.join(timeout=10)

    assert left_slice < 0.5 <= PODS.termination_grace - 0.1 <= stopped
    assert sent[0] > 50 and failures == []
