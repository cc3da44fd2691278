"""EKS managed node groups and their nodes, played against AWS in moto and the local Kubernetes API.

moto keeps an EKS node group's scalingConfig but gives it no instances, and its Auto Scaling groups
have instances that never become Kubernetes nodes. This module plays, on one loop, what EKS, the
instances' kubelets and the preflight DaemonSet do between the two, for every GPU node group of
the targets document (both generations):

- the Auto Scaling group under each node group, named as the targets document says, is created
  (with a launch template) the first time its node group is seen;
- sizes, both ways, as EKS keeps a managed node group and its Auto Scaling group in step: a new
  scalingConfig (UpdateNodegroupConfig) is applied to the group's min, desired and max after
  `NodeGroupDelays.scaling` (EKS updates are asynchronous); a changed desired capacity of the Auto
  Scaling group (TerminateInstanceInAutoScalingGroup with decrement, the cluster autoscaler's
  SetDesiredCapacity) shows in the node group's scalingConfig on the next pass. The sizes last
  synced tell which side changed; an update of the node group still pending wins, as its
  application sets all three sizes;
- the kubelet: each InService instance registers a Node `NodeGroupDelays.join` seconds after it
  appeared, named after its private IP (`ip-10-0-1-2.us-west-2.compute.internal`), with the labels
  EKS and the kubelet set (`eks.amazonaws.com/nodegroup`, `peakguard.io/pool`,
  `peakguard.io/generation`, `topology.kubernetes.io/zone`, ...), `spec.providerID`
  `aws:///<az>/<instance id>`, the node group's taints (the GPU taint) plus the startup taint
  `infra.facts.PREFLIGHT_TAINT`, Ready, and its instance type's GPUs as allocatable
  `nvidia.com/gpu` (or `gpus_per_node`);
- the preflight DaemonSet: `NodeGroupDelays.preflight` seconds after registration it writes its
  result annotation and removes the startup taint; on a node of a generation or node group named in
  `failing_preflight`, the result says failed and the taint stays; a node given the taint back
  later (an in-place change) is checked again, as the restarted gate does;
- an instance gone from its Auto Scaling group (terminated): its Node is deleted once
  `NodeGroupDelays.shutdown` has passed (next pass by default),
  and the pods bound to it are deleted at once, as the pod garbage collector does for a deleted
  node (the played kubelet in controllers.py stops their backends).

Real AWS refuses some changes moto accepts. They are not refused here either (the call already
succeeded in moto), but written to `violations`, which tests assert empty: an Auto Scaling group
whose desired capacity fell below its minimum (TerminateInstanceInAutoScalingGroup with decrement
is refused there, ValidationError) and a scalingConfig that breaks min <= desired <= max.

Not played: instance launch failures and capacity, EKS's own drain on scale-in (pods simply go
with their node), AZ rebalancing, node repair, a deleted Node re-registering, the system group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3

from infra.facts import (
    EKS_TAINT_EFFECTS,
    GENERATION_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    INSTANCE_TYPES,
    NODE_GROUP_LABEL,
    POOL_LABEL,
    PREFLIGHT_RESULT_ANNOTATION,
    PREFLIGHT_TAINT,
)
from infra.targets import NodeGroupTarget, TargetsDocument
from lab.kube_api import ApiStatus, ObjectStore

__all__ = ["NODE_GROUP_LABEL", "NodeGroupDelays", "NodeGroups"]

logger = logging.getLogger(__name__)

_EFFECTS = {eks: kubernetes for kubernetes, eks in EKS_TAINT_EFFECTS.items()}
_MERGE = "application/merge-patch+json"
_IMAGE = "ami-12c6146b"
"""An image moto knows, for the launch templates of the Auto Scaling groups created here."""


@dataclass(frozen=True)
class NodeGroupDelays:
    scaling: float = 2.0
    """Seconds from an UpdateNodegroupConfig to the Auto Scaling group's new sizes (EKS's update;
    tens of seconds on AWS)."""
    join: float = 3.0
    """Seconds from an instance appearing InService to its Node registering (boot and kubelet; a
    minute or two on AWS)."""
    preflight: float = 2.0
    """Seconds from a Node's registration until the preflight DaemonSet lifts its startup taint (the
    GPU, EFA and NVMe checks; about a minute on a GPU node)."""
    shutdown: float = 0.0
    """Seconds a terminated instance's Node is still listed (EKS's lifecycle-hook drain, then the
    shutdown; a minute or more on AWS)."""
    tick: float = 0.25
    """Seconds between passes."""


@dataclass
class _Instance:
    instance_id: str
    group: NodeGroupTarget
    seen: float
    """When the instance was first seen InService (monotonic)."""
    node: str = ""
    """Its Node's name once registered."""
    next_check: float | None = None
    """When the preflight DaemonSet checks it (next); None once it passed."""


Size = tuple[int, int, int]
"""(min, desired, max)."""


class NodeGroups:
    """`with NodeGroups(store, targets, aws=client_args):` plays on a thread; `tick()` runs one pass."""

    def __init__(self, store: ObjectStore, targets: TargetsDocument, *, aws: Mapping[str, Any],
                 delays: NodeGroupDelays | None = None, gpus_per_node: int | None = None) -> None:  # fmt: skip
        """`aws`: keyword arguments for `boto3.client` (endpoint_url, region_name, credentials);
        `gpus_per_node`: allocatable GPUs of every node instead of its instance type's."""
        self.store = store
        self.targets = targets
        self.delays = delays or NodeGroupDelays()
        self.gpus_per_node = gpus_per_node
        self.failing_preflight: set[str] = set()
        """Generations (blue, green) or node group names whose nodes fail preflight: the taint stays."""
        self.violations: list[str] = []
        """Changes real AWS would have refused (see the module docstring), as they were seen."""
        self._groups = tuple(group for group in targets.node_groups if group.generation is not None)
        self._eks = boto3.client("eks", **aws)
        self._autoscaling = boto3.client("autoscaling", **aws)
        self._ec2 = boto3.client("ec2", **aws)
        self._synced: dict[str, Size] = {}
        """Per node group, the sizes both sides had when last in step."""
        self._pending: dict[str, tuple[Size, float]] = {}
        """Per node group, the scalingConfig waiting to be applied and since when (EKS update in flight)."""
        self._instances: dict[str, _Instance] = {}
        self._leaving: dict[str, float] = {}
        """Nodes whose instance is gone, and since when (deleted after `NodeGroupDelays.shutdown`)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-node-groups", daemon=True)

    def __enter__(self) -> NodeGroups:
        # EKS creates a node group's Auto Scaling group with the node group: have them before the
        # first change, which must then take its update's time like any other.
        with self._lock:
            self._sync_sizes()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def nodes(self, node_group: str) -> list[str]:
        """Names of the registered Nodes of one node group."""
        with self._lock:
            return sorted(i.node for i in self._instances.values() if i.node and i.group.name == node_group)

    # --- The loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.delays.tick):
            try:
                self.tick()
            except Exception:  # one failed pass (moto stopping at shutdown, a race): the next one retries
                logger.exception("node groups: a pass failed")

    def tick(self) -> None:
        with self._lock:
            # Each delay runs from a reading's own time, never from the start of a slow pass.
            groups = self._sync_sizes()
            self._kubelets(groups, time.monotonic())

    # --- Sizes: EKS <-> Auto Scaling ----------------------------------------------------

    def _sync_sizes(self) -> dict[str, dict[str, Any]]:
        """Keep each node group and its Auto Scaling group in step; the Auto Scaling groups by name."""
        cluster = self.targets.cluster.name
        names = [group.autoscaling_group for group in self._groups]
        found = {
            asg["AutoScalingGroupName"]: asg
            for asg in self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]
        }
        for group in self._groups:
            try:
                scaling = self._eks.describe_nodegroup(clusterName=cluster, nodegroupName=group.name)["nodegroup"][
                    "scalingConfig"
                ]
            except self._eks.exceptions.ResourceNotFoundException:
                continue  # not created yet: nothing for EKS to run
            eks: Size = (scaling["minSize"], scaling["desiredSize"], scaling["maxSize"])
            asg = found.get(group.autoscaling_group)
            if asg is None:
                found[group.autoscaling_group] = self._create_group(group, eks)
                self._synced[group.name] = eks
                continue
            current: Size = (asg["MinSize"], asg["DesiredCapacity"], asg["MaxSize"])
            synced = self._synced.setdefault(group.name, current)
            if current[1] < current[0] and current != synced:
                self._violation(
                    f"{group.autoscaling_group}: desired capacity {current[1]} below its minimum {current[0]}: real "
                    "Auto Scaling refuses TerminateInstanceInAutoScalingGroup with decrement here (ValidationError); "
                    f"lower {group.name}'s minSize first and wait until its Auto Scaling group shows it"
                )
            if eks != synced:
                # An UpdateNodegroupConfig: applied to the Auto Scaling group (all three sizes) once
                # EKS's update ran, whatever the group did meanwhile.
                if not eks[0] <= eks[1] <= eks[2]:
                    self._violation(f"{group.name}: scalingConfig {_size(eks)} breaks min <= desired <= max: real "
                                    "UpdateNodegroupConfig refuses it (InvalidParameterException)")  # fmt: skip
                # Each update takes its own time: a newer scalingConfig starts the wait again.
                pending, since = self._pending.get(group.name, (None, 0.0))
                if pending != eks:
                    since = time.monotonic()
                    self._pending[group.name] = (eks, since)
                if time.monotonic() - since >= self.delays.scaling:
                    self._autoscaling.update_auto_scaling_group(
                        AutoScalingGroupName=group.autoscaling_group, MinSize=eks[0], DesiredCapacity=eks[1],
                        MaxSize=eks[2],
                    )  # fmt: skip
                    self._synced[group.name] = eks
                    del self._pending[group.name]
                    found[group.autoscaling_group] = self._describe(group.autoscaling_group)
                continue
            self._pending.pop(group.name, None)
            if current != synced:
                # The Auto Scaling group changed on its own side: the node group shows its sizes.
                reflected: Size = (min(current[0], current[1]), current[1], current[2])
                if reflected != current:  # below its minimum (a violation, above): made consistent
                    self._autoscaling.update_auto_scaling_group(
                        AutoScalingGroupName=group.autoscaling_group, MinSize=reflected[0]
                    )
                self._eks.update_nodegroup_config(
                    clusterName=cluster, nodegroupName=group.name,
                    scalingConfig={"minSize": reflected[0], "desiredSize": reflected[1], "maxSize": reflected[2]},
                )  # fmt: skip
                self._synced[group.name] = reflected
        return found

    def _create_group(self, group: NodeGroupTarget, size: Size) -> dict[str, Any]:
        template = f"{group.name}-local"
        with contextlib.suppress(self._ec2.exceptions.ClientError):  # already there
            self._ec2.create_launch_template(
                LaunchTemplateName=template,
                LaunchTemplateData={"ImageId": _IMAGE, "InstanceType": group.instance_type},
            )
        self._autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group.autoscaling_group,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=size[0], DesiredCapacity=size[1], MaxSize=size[2],
            AvailabilityZones=[group.availability_zone or f"{self.targets.cluster.region}a"],
            Tags=[{"Key": "eks:nodegroup-name", "Value": group.name, "PropagateAtLaunch": True}],
        )  # fmt: skip
        return self._describe(group.autoscaling_group)

    def _describe(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ][0]
        return found

    def _violation(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    # --- Instances -> Nodes ---------------------------------------------------------------

    def _kubelets(self, groups: Mapping[str, Mapping[str, Any]], now: float) -> None:
        alive: set[str] = set()
        for group in self._groups:
            asg = groups.get(group.autoscaling_group)
            for instance in (asg or {}).get("Instances", []):
                if instance["LifecycleState"] != "InService":
                    continue
                alive.add(instance["InstanceId"])
                known = self._instances.setdefault(
                    instance["InstanceId"], _Instance(instance["InstanceId"], group, seen=now)
                )
                if not known.node and now - known.seen >= self.delays.join:
                    self._register(known, instance.get("AvailabilityZone") or group.availability_zone or "")
                elif known.next_check is not None and now >= known.next_check:
                    self._preflight(known)
                elif known.node and known.next_check is None and self._tainted_again(known.node):
                    # The gate restarted on a node given its startup taint back (an in-place change).
                    known.next_check = now + self.delays.preflight
        for instance_id in [i for i in self._instances if i not in alive]:
            gone = self._instances.pop(instance_id)
            if gone.node:
                self._leaving[gone.node] = now
        for node, since in list(self._leaving.items()):
            if now - since >= self.delays.shutdown:
                del self._leaving[node]
                self._remove_node(node)

    def _register(self, instance: _Instance, zone: str) -> None:
        group = instance.group
        described = self._ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
        address = described.get("PrivateIpAddress") or ""
        name = f"ip-{address.replace('.', '-')}.{self.targets.cluster.region}.compute.internal" if address else (
            instance.instance_id
        )  # fmt: skip
        node_group = self._eks.describe_nodegroup(clusterName=self.targets.cluster.name, nodegroupName=group.name)[
            "nodegroup"
        ]
        taints = [
            {"key": t["key"], "value": t.get("value", ""), "effect": _EFFECTS.get(t["effect"], t["effect"])}
            for t in node_group.get("taints") or []
        ]
        for taint in (GPU_TAINT, PREFLIGHT_TAINT):  # the GPU pools' group taint; the startup taint of user data
            if all(t["key"] != taint.key for t in taints):
                taints.append({"key": taint.key, "value": taint.value, "effect": taint.effect})
        gpus = self.gpus_per_node if self.gpus_per_node is not None else _gpus_of(group.instance_type)
        labels = {
            **(node_group.get("labels") or {}),
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": group.instance_type,
            "topology.kubernetes.io/region": self.targets.cluster.region,
            "topology.kubernetes.io/zone": zone,
            NODE_GROUP_LABEL: group.name,
            "eks.amazonaws.com/capacityType": node_group.get("capacityType") or "ON_DEMAND",
            POOL_LABEL: group.pool,
            GENERATION_LABEL: group.generation or "",
        }
        release = node_group.get("releaseVersion") or ""
        body = {
            "metadata": {"name": name, "labels": labels},
            "spec": {"providerID": f"aws:///{zone}/{instance.instance_id}", "taints": taints},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "capacity": {GPU_RESOURCE: str(gpus)},
                "allocatable": {GPU_RESOURCE: str(gpus)},
                "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
                "nodeInfo": _node_info(instance.instance_id, release),
            },
        }
        with contextlib.suppress(ApiStatus):  # there already (a previous pass was interrupted)
            self.store.create("nodes", None, body)
        instance.node = name
        instance.next_check = time.monotonic() + self.delays.preflight

    def _preflight(self, instance: _Instance) -> None:
        """The DaemonSet's verdict: the result annotation, then the startup taint lifted if it passed;
        a failed node is checked again after another `preflight` delay (the gate retries)."""
        group = instance.group
        failed = bool({group.name, group.generation} & self.failing_preflight)
        result = {"ok": not failed, "failed": ["gpus"] if failed else [], "attempt": 1,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        if failed:
            result["why"] = {"gpus": "expected 4 GPUs, nvidia-smi found 3 (played failure)"}
        try:
            node = self.store.get("nodes", None, instance.node)
            taints = [
                t for t in (node.get("spec") or {}).get("taints") or [] if failed or t["key"] != PREFLIGHT_TAINT.key
            ]
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"],
                             "annotations": {PREFLIGHT_RESULT_ANNOTATION: json.dumps(result, separators=(",", ":"))}},
                "spec": {"taints": taints},
            }  # fmt: skip
            self.store.patch("nodes", None, instance.node, patch, content_type=_MERGE)
        except ApiStatus:
            return  # changed meanwhile (a cordon) or gone: next pass
        instance.next_check = time.monotonic() + self.delays.preflight if failed else None

    def _tainted_again(self, node: str) -> bool:
        try:
            found = self.store.get("nodes", None, node)
        except ApiStatus:
            return False
        return any(t["key"] == PREFLIGHT_TAINT.key for t in (found.get("spec") or {}).get("taints") or [])

    def _remove_node(self, node: str) -> None:
        """The instance is gone: the node lifecycle controller deletes its Node, the pod garbage
        collector its pods (at once: there is no kubelet left to wait for)."""
        with contextlib.suppress(ApiStatus):
            self.store.delete("nodes", None, node)
        for pod in self.store.list("pods", fields=f"spec.nodeName={node}"):
            with contextlib.suppress(ApiStatus):
                self.store.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], grace_seconds=0)


def _node_info(instance_id: str, release: str) -> dict[str, str]:
    """What the kubelet reports about the machine (every field the API requires)."""
    kubelet = f"v{release.split('-')[0]}-eks" if release else "v0.0.0-local"
    return {
        "architecture": "amd64", "operatingSystem": "linux", "osImage": f"Amazon Linux 2023 (EKS {release or 'local'})",
        "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0", "kubeletVersion": kubelet,
        "kubeProxyVersion": kubelet, "bootID": instance_id, "machineID": instance_id, "systemUUID": instance_id,
    }  # fmt: skip


def _gpus_of(instance_type: str) -> int:
    known = INSTANCE_TYPES.get(instance_type)
    return known.gpus if known is not None else 0


def _size(size: Size) -> str:
    return f"min {size[0]} desired {size[1]} max {size[2]}"
