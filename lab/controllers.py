"""The controllers the local Kubernetes API lacks, played with realistic delays.

A real cluster turns a raised HPA minimum into pods, pods into Ready endpoints, and a changed
ConfigMap into a changed file inside each pod, each after its own delay. Runbook timings (the
30-second rollback, the minute-long ConfigMap sync that makes the admin-API push necessary) only
mean something if those delays are there, so this module plays, on one loop:

- the HPA and KEDA: a Deployment's replicas are kept within its HPA's bounds (no metrics: a count
  inside the bounds is left alone), or at its ScaledObject's minimum (KEDA with no activity);
- the deployment controller: pods are created and deleted to match `spec.replicas`, named
  `<deployment>-<template hash>-<suffix>` and labelled like the template; terminating pods do not
  count (their replacements are made at once, as a ReplicaSet does);
- the scheduler: a pod is bound to a node that fits it — Ready, not cordoned
  (`spec.unschedulable`), every NoSchedule/NoExecute taint tolerated by the pod, its
  `nodeSelector` matched, and enough `nvidia.com/gpu` left of the node's allocatable for the
  pod's request — the least loaded first; with none fitting it stays Pending and is tried again
  each pass;
- the kubelet: a pod goes Running after `Delays.pod_start` on a backend of its own (a real local
  process on its own loopback address), and Ready after `Delays.readiness` once that backend's
  readiness check passes; it goes unready when the check fails (a replica that really breaks);
- graceful termination: a deleted or evicted pod is marked terminating by the API
  (`deletionTimestamp`, see kube_api.py) and leaves the EndpointSlice at once; its backend keeps
  serving through its preStop sleep (bounded by `terminationGracePeriodSeconds`, capped by
  `Delays.termination_grace`), so requests in flight finish while the load balancer stops
  sending; then the backend is stopped and the pod removed. A pod deleted with grace 0 (a forced
  delete, the pod garbage collector) stops at once;
- the kubelet's ConfigMap sync: a mounted ConfigMap's new data reaches the pod's backend after
  `Delays.config_sync`;
- the EndpointSlice controller: one slice per Service lists its pods with their readiness
  (`ready`, `serving`, `terminating`);
- nodes: `nodes` are created as plain local nodes (or none, when `node_groups.py` plays EKS's);
  `set_node_ready(node, False)` makes a node NotReady on command, its pods unready (out of the
  slices) and new pods go elsewhere.

Not played: topology spread constraints and affinities (the least loaded fitting node stands in
for spreading), resources other than GPUs, preemption, container restarts (a crashed backend
stays down and its pod unready).

Everything here is played, not emulated API semantics (those are in `kube_api.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.facts import GPU_RESOURCE
from lab.kube_api import ApiStatus, ObjectStore

__all__ = ["Backend", "BackendFactory", "Controllers", "Delays"]

_MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class Delays:
    pod_start: float = 3.0
    """Seconds from a pod's creation to its container running (scheduling, image, start)."""
    readiness: float = 1.0
    """Seconds after the backend's readiness check first passes until the pod counts as Ready."""
    config_sync: float = 10.0
    """Seconds until a changed ConfigMap reaches mounted pods (the kubelet's sync; up to ~90 s real)."""
    termination_grace: float = 1.5
    """Seconds, at most, a terminating pod keeps serving before its backend is stopped: its preStop
    sleep (15 s for the model service on a cluster) capped to this, still longer than it takes the
    slices and the local load balancer to stop sending to it (two passes of a fraction of a second)."""
    tick: float = 0.2
    """Seconds between reconciliation passes."""


class Backend(Protocol):
    """What runs inside one emulated pod."""

    address: str
    port: int

    def ready(self) -> bool:
        """The readiness probe: True when it would pass now."""
        ...

    def write_config(self, config_map: str, data: Mapping[str, str]) -> None:
        """A mounted ConfigMap's files, as the kubelet writes them."""
        ...

    def stop(self) -> None: ...


BackendFactory = Callable[[str, Mapping[str, Any], str], Backend]
"""(pod name, pod template, loopback address) -> a started backend (may take seconds)."""


@dataclass
class _Pod:
    name: str
    namespace: str
    deployment: str
    created: float
    node: str = ""
    backend: Backend | None = None
    ready_since: float | None = None
    starting: bool = False
    config_versions: dict[str, str] = field(default_factory=dict)
    terminating_since: float | None = None
    """When the API marked it for deletion (monotonic); None while it lives."""
    serve_for: float = 0.0
    """Seconds it keeps serving once terminating: its preStop sleep, bounded and capped."""
    stopping: bool = False


class Controllers:
    """`with Controllers(store, backends=factory):` runs the loop on a thread; `tick()` runs one pass."""

    def __init__(self, store: ObjectStore, *, backends: BackendFactory, delays: Delays | None = None,
                 max_pods: int = 8, nodes: tuple[str, ...] = ("local-node-1", "local-node-2"),
                 node_labels: Mapping[str, str] | None = None, node_gpus: int = 8,
                 zones: tuple[str, ...] = ()) -> None:  # fmt: skip
        """`nodes` are created Ready, untainted, with `node_labels` and `node_gpus` GPUs each, and the
        `zones` in turn as their `topology.kubernetes.io/zone`; pass no nodes when another player
        (node_groups.py) registers them."""
        self.store = store
        self.delays = delays or Delays()
        self.max_pods = max_pods
        """Pods beyond this stay Pending (like a cluster out of GPUs): each pod is a real process."""
        self._backends = backends
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._config_changes: dict[tuple[str, str], tuple[str, float]] = {}
        self._next_address = 2
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-controllers", daemon=True)
        store.listeners.append(self._on_change)
        # A kubelet is here to finish deletions: deleted pods terminate gracefully.
        store.graceful_pod_deletion = True
        for index, node in enumerate(nodes):
            labels = {**(node_labels or {}), "kubernetes.io/hostname": node}
            if zones:
                labels["topology.kubernetes.io/zone"] = zones[index % len(zones)]
            body = {
                "metadata": {"name": node, "labels": labels},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "capacity": {GPU_RESOURCE: str(node_gpus)}, "allocatable": {GPU_RESOURCE: str(node_gpus)}},
            }  # fmt: skip
            with contextlib.suppress(ApiStatus):  # already there
                store.create("nodes", None, body)

    def __enter__(self) -> Controllers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.store.graceful_pod_deletion = False  # no kubelet left to finish a deletion
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for pod in pods:
            if pod.backend is not None:
                pod.backend.stop()

    def set_node_ready(self, node: str, ready: bool) -> None:
        """A node's kubelet stops (or resumes) reporting: its pods go unready and leave the slices;
        new pods are placed on Ready nodes only."""
        condition = {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        self.store.patch("nodes", None, node, condition, content_type=_MERGE, only_status=True)

    def _ready_nodes(self) -> list[str]:
        return sorted(node["metadata"]["name"] for node in self.store.list("nodes") if _node_ready(node))

    def _schedule(self, spec: Mapping[str, Any], load: dict[str, tuple[int, int]]) -> str:
        """The node the scheduler binds a pod of `spec` to, or "" (it stays Pending). `load` is
        (pods, GPUs requested) per node, updated with the choice."""
        wanted = _gpus(spec)
        fitting: list[tuple[int, str]] = []
        for node in self.store.list("nodes"):
            name = node["metadata"]["name"]
            pods, used = load.get(name, (0, 0))
            allocatable = int((node.get("status") or {}).get("allocatable", {}).get(GPU_RESOURCE, 0))
            if _schedulable(node, spec) and used + wanted <= allocatable:
                fitting.append((pods, name))
        if not fitting:
            return ""
        _, chosen = min(fitting)
        pods, used = load.get(chosen, (0, 0))
        load[chosen] = (pods + 1, used + wanted)
        return chosen

    def _load(self) -> dict[str, tuple[int, int]]:
        """(pods, GPUs requested) per node, of every pod bound there that has not finished."""
        load: dict[str, tuple[int, int]] = {}
        for pod in self.store.list("pods"):
            node = (pod.get("spec") or {}).get("nodeName")
            if node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                pods, used = load.get(node, (0, 0))
                load[node] = (pods + 1, used + _gpus(pod.get("spec") or {}))
        return load

    def backend(self, namespace: str, pod: str) -> Backend | None:
        with self._lock:
            found = self._pods.get((namespace, pod))
            return found.backend if found else None

    # --- The loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.delays.tick):
            self.tick()

    def tick(self) -> None:
        self._autoscalers()
        self._deployments()
        self._kubelet()
        self._endpoint_slices()

    def _on_change(self, event: str, plural: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata", {})
        key = (metadata.get("namespace"), metadata.get("name"))
        if plural == "configmaps" and event == "MODIFIED":
            self._config_changes[key] = (metadata.get("resourceVersion", ""), time.monotonic())
        if plural == "pods" and event == "MODIFIED" and metadata.get("deletionTimestamp"):
            # Deleted or evicted through the API: terminating. It leaves the slices at once and keeps
            # serving through its preStop sleep, so requests in flight finish.
            with self._lock:
                pod = self._pods.get(key)
                if pod is not None and pod.terminating_since is None:
                    pod.terminating_since = time.monotonic()
                    pod.serve_for = min(_pre_stop_seconds(obj.get("spec") or {}), self.delays.termination_grace)
        if plural == "pods" and event == "DELETED":
            # Removed (a forced delete, or the end of a graceful one): its container stops now.
            with self._lock:
                pod = self._pods.pop(key, None)
                backend = None
                if pod is not None:
                    backend, pod.backend = pod.backend, None
            if backend is not None:
                threading.Thread(target=backend.stop, daemon=True).start()

    # --- HPA and KEDA -----------------------------------------------------------------

    def _autoscalers(self) -> None:
        for hpa in self.store.list("horizontalpodautoscalers"):
            spec = hpa.get("spec", {})
            self._clamp(hpa["metadata"]["namespace"], spec.get("scaleTargetRef", {}).get("name"),
                        int(spec.get("minReplicas", 1)), int(spec.get("maxReplicas", 1)))  # fmt: skip
        for scaled in self.store.list("scaledobjects"):
            spec = scaled.get("spec", {})
            # KEDA with no metric activity: the Deployment sits at the ScaledObject's minimum.
            low = int(spec.get("minReplicaCount", 0))
            self._clamp(scaled["metadata"]["namespace"], spec.get("scaleTargetRef", {}).get("name"), low, low)

    def _clamp(self, namespace: str, name: str | None, low: int, high: int) -> None:
        if not name:
            return
        try:
            deployment = self.store.get("deployments", namespace, name)
        except ApiStatus:
            return
        current = deployment.get("spec", {}).get("replicas")
        wanted = min(high, max(low, current if current is not None else low))
        if wanted != current:
            self.store.patch("deployments", namespace, name, {"spec": {"replicas": wanted}},
                             content_type="application/merge-patch+json")  # fmt: skip

    # --- Deployments ------------------------------------------------------------------

    def _deployments(self) -> None:
        for deployment in self.store.list("deployments"):
            namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
            spec = deployment.get("spec", {})
            template = spec.get("template", {})
            template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            selector = spec.get("selector", {}).get("matchLabels", {})
            labels = ",".join(f"{k}={v}" for k, v in selector.items())
            pods = sorted(
                (p for p in self.store.list("pods", namespace, labels=labels) if not _terminating(p)),
                key=lambda p: p["metadata"]["name"],
            )
            wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
            for _ in range(wanted - len(pods)):
                self._create_pod(namespace, name, template, template_hash)
            for pod in pods[wanted:][::-1]:
                with contextlib.suppress(ApiStatus):  # gone meanwhile
                    self.store.delete("pods", namespace, pod["metadata"]["name"])
            self._deployment_status(namespace, name, deployment)

    def _create_pod(self, namespace: str, deployment: str, template: Mapping[str, Any], template_hash: str) -> None:
        name = f"{deployment}-{template_hash[:5]}-{secrets.token_hex(3)[:5]}"
        # Bound at once when a node fits; otherwise Pending, and the kubelet pass tries again.
        node = self._schedule(template.get("spec", {}), self._load())
        labels = {**template.get("metadata", {}).get("labels", {}), "pod-template-hash": template_hash[:10]}
        # Owned as a Deployment's pods are, by its ReplicaSet (not served here; drains read the kind).
        replica_set = f"{deployment}-{template_hash[:10]}"
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": replica_set,
            "controller": True,
            "blockOwnerDeletion": True,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{replica_set}")),
        }
        self.store.create("pods", namespace, {
            "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
            "spec": {**template.get("spec", {}), "nodeName": node},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        })  # fmt: skip
        with self._lock:
            self._pods[(namespace, name)] = _Pod(name, namespace, deployment, time.monotonic(), node=node)

    def _deployment_status(self, namespace: str, name: str, deployment: Mapping[str, Any]) -> None:
        pods = [p for p in self._owned(namespace, name) if p.terminating_since is None]
        ready = sum(1 for p in pods if p.ready_since is not None)
        status = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                  "observedGeneration": deployment["metadata"].get("generation", 1)}  # fmt: skip
        current = deployment.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            self.store.patch("deployments", namespace, name, {"status": status},
                             content_type="application/merge-patch+json", only_status=True)  # fmt: skip

    def _owned(self, namespace: str, deployment: str) -> list[_Pod]:
        with self._lock:
            return [p for p in self._pods.values() if p.namespace == namespace and p.deployment == deployment]

    # --- The kubelet ------------------------------------------------------------------

    def _kubelet(self) -> None:
        now = time.monotonic()
        with self._lock:
            pods = list(self._pods.values())
        running = sum(1 for p in pods if p.backend is not None or p.starting)
        ready_nodes = set(self._ready_nodes())
        load: dict[str, tuple[int, int]] | None = None
        for pod in pods:
            if pod.terminating_since is not None:
                self._terminate(pod, now)
                continue
            if not pod.node:
                load = self._load() if load is None else load
                pod.node = self._schedule(self._template(pod).get("spec", {}), load)
                if pod.node:
                    with contextlib.suppress(ApiStatus):
                        self.store.patch("pods", pod.namespace, pod.name, {"spec": {"nodeName": pod.node}},
                                         content_type=_MERGE)  # fmt: skip
            if pod.node not in ready_nodes:
                if pod.backend is not None:
                    pod.ready_since = None
                    self._pod_status(pod, False)
                continue
            if pod.backend is None:
                if not pod.starting and now - pod.created >= self.delays.pod_start and running < self.max_pods:
                    pod.starting = True
                    running += 1
                    threading.Thread(target=self._start, args=(pod,), daemon=True).start()
                continue
            self._sync_configs(pod, now)
            ready = pod.backend.ready()
            if ready and pod.ready_since is None:
                pod.ready_since = now
            elif not ready:
                pod.ready_since = None
            is_ready = pod.ready_since is not None and now - pod.ready_since >= self.delays.readiness
            self._pod_status(pod, is_ready)

    def _template(self, pod: _Pod) -> Mapping[str, Any]:
        try:
            deployment = self.store.get("deployments", pod.namespace, pod.deployment)
        except ApiStatus:
            return {}
        template: Mapping[str, Any] = deployment.get("spec", {}).get("template", {})
        return template

    def _terminate(self, pod: _Pod, now: float) -> None:
        """A terminating pod: once its preStop sleep is over, stop its backend, then remove the pod."""
        assert pod.terminating_since is not None
        if pod.stopping or pod.starting or now - pod.terminating_since < pod.serve_for:
            return  # a starting pod is stopped by `_start` once its backend is up
        pod.stopping = True
        with self._lock:
            backend, pod.backend = pod.backend, None

        def finish() -> None:
            if backend is not None:
                backend.stop()
            with contextlib.suppress(ApiStatus):  # already gone
                self.store.delete("pods", pod.namespace, pod.name, grace_seconds=0)

        threading.Thread(target=finish, daemon=True).start()

    def _start(self, pod: _Pod) -> None:
        try:
            template = self.store.get("deployments", pod.namespace, pod.deployment)["spec"]["template"]
            with self._lock:
                address = f"127.0.0.{self._next_address}"
                # 127.0.0.2 to .251 in turn (the lab's warm spares wait on the next ones).
                self._next_address = (self._next_address - 1) % 250 + 2
            backend = self._backends(pod.name, template, address)
        except Exception:  # noqa: BLE001 (a pod that cannot start stays Pending, as with a crash loop)
            pod.starting = False
            return
        with self._lock:
            removed = (pod.namespace, pod.name) not in self._pods
            if not removed:
                pod.backend = backend
            pod.starting = False
            if pod.terminating_since is not None:
                pod.serve_for = 0.0  # deleted while starting: it never serves, `_terminate` stops it
        if removed:
            backend.stop()
            return
        if pod.terminating_since is not None:
            return
        self._write_configs(pod)
        running = {"status": {"phase": "Running", "podIP": address}}
        with contextlib.suppress(ApiStatus):  # deleted meanwhile
            self.store.patch("pods", pod.namespace, pod.name, running, content_type=_MERGE, only_status=True)

    def _pod_status(self, pod: _Pod, ready: bool) -> None:
        try:
            current = self.store.get("pods", pod.namespace, pod.name)
        except ApiStatus:
            return
        want = "True" if ready else "False"
        conditions = (current.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == want for c in conditions):
            return
        condition = {"status": {"conditions": [{"type": "Ready", "status": want}]}}
        self.store.patch("pods", pod.namespace, pod.name, condition, content_type=_MERGE, only_status=True)

    def _mounted_config_maps(self, pod: _Pod) -> list[str]:
        try:
            template = self.store.get("deployments", pod.namespace, pod.deployment)["spec"]["template"]
        except ApiStatus:
            return []
        volumes = template.get("spec", {}).get("volumes") or []
        return [v["configMap"]["name"] for v in volumes if "configMap" in v]

    def _sync_configs(self, pod: _Pod, now: float) -> None:
        for name in self._mounted_config_maps(pod):
            change = self._config_changes.get((pod.namespace, name))
            if change is None:
                continue
            version, at = change
            if pod.config_versions.get(name) != version and now - at >= self.delays.config_sync:
                self._write_config(pod, name)

    def _write_configs(self, pod: _Pod) -> None:
        for name in self._mounted_config_maps(pod):
            self._write_config(pod, name)

    def _write_config(self, pod: _Pod, name: str) -> None:
        try:
            config_map = self.store.get("configmaps", pod.namespace, name)
        except ApiStatus:
            return
        if pod.backend is not None:
            pod.backend.write_config(name, config_map.get("data") or {})
            pod.config_versions[name] = config_map["metadata"]["resourceVersion"]

    # --- EndpointSlices ---------------------------------------------------------------

    def _endpoint_slices(self) -> None:
        for service in self.store.list("services"):
            namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
            selector = service.get("spec", {}).get("selector") or {}
            if not selector:
                continue
            labels = ",".join(f"{k}={v}" for k, v in selector.items())
            endpoints, port = [], None
            for pod in self.store.list("pods", namespace, labels=labels):
                ip = (pod.get("status") or {}).get("podIP")
                if not ip:
                    continue
                backend = self.backend(namespace, pod["metadata"]["name"])
                port = backend.port if backend is not None else port
                serving = any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
                terminating = _terminating(pod)
                # A terminating endpoint is never `ready`, whatever its probe says: new connections
                # stop at once, while `serving` tells the load balancers that drain it gracefully.
                conditions = {"ready": serving and not terminating, "serving": serving, "terminating": terminating}
                reference = {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": namespace}
                endpoints.append({"addresses": [ip], "conditions": conditions, "targetRef": reference})
            body = {
                "metadata": {"name": f"{name}-local", "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port or 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }  # fmt: skip
            try:
                current = self.store.get("endpointslices", namespace, f"{name}-local")
            except ApiStatus:
                self.store.create("endpointslices", namespace, body)
                continue
            if current.get("endpoints") != endpoints or current.get("ports") != body["ports"]:
                self.store.replace("endpointslices", namespace, f"{name}-local", body)


# --- What the scheduler and the kubelet read from objects -----------------------------------


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def _schedulable(node: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether the scheduler may bind a pod of `spec` here, resources aside."""
    node_spec = node.get("spec") or {}
    if not _node_ready(node) or node_spec.get("unschedulable"):
        return False
    tolerations = spec.get("tolerations") or []
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
            return False
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in (spec.get("nodeSelector") or {}).items())


def _gpus(spec: Mapping[str, Any]) -> int:
    """GPUs a pod asks for: the sum over its containers (limits, else requests)."""
    total = 0
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE, (resources.get("requests") or {}).get(GPU_RESOURCE))
        total += int(amount or 0)
    return total


def _pre_stop_seconds(spec: Mapping[str, Any]) -> float:
    """How long the pod's preStop sleep lasts, bounded by its termination grace period."""
    sleeps = [
        float(((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0))
        for container in spec.get("containers") or []
    ]
    grace = float(spec.get("terminationGracePeriodSeconds", 30))
    return min(max(sleeps, default=0.0), grace)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))
