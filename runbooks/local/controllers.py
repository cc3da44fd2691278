"""The controllers the local Kubernetes API lacks, played with realistic delays.

A real cluster turns a raised HPA minimum into pods, pods into Ready endpoints, and a changed
ConfigMap into a changed file inside each pod, each after its own delay. Runbook timings (the
30-second rollback, the minute-long ConfigMap sync that makes the admin-API push necessary) only
mean something if those delays are there, so this module plays, on one loop:

- the HPA and KEDA: a Deployment's replicas are kept within its HPA's bounds (no metrics: a count
  inside the bounds is left alone), or at its ScaledObject's minimum (KEDA with no activity);
- the deployment controller: pods are created and deleted to match `spec.replicas`, named
  `<deployment>-<template hash>-<suffix>` and labelled like the template;
- the kubelet: a pod goes Running after `Delays.pod_start` on a backend of its own (a real local
  process on its own loopback address), and Ready after `Delays.readiness` once that backend's
  readiness check passes; it goes unready when the check fails (a replica that really breaks);
  a deleted or evicted pod's backend is stopped;
- the kubelet's ConfigMap sync: a mounted ConfigMap's new data reaches the pod's backend after
  `Delays.config_sync`;
- the EndpointSlice controller: one slice per Service lists its pods with their readiness;
- nodes: pods are spread over Ready nodes; `set_node_ready(node, False)` makes a node NotReady
  on command, its pods unready (out of the slices) and new pods go elsewhere.

Everything here is played, not emulated API semantics (those are in `kube_api.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from runbooks.local.kube_api import ApiStatus, ObjectStore

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


class Controllers:
    """`with Controllers(store, backends=factory):` runs the loop on a thread; `tick()` runs one pass."""

    def __init__(self, store: ObjectStore, *, backends: BackendFactory, delays: Delays | None = None,
                 max_pods: int = 8, nodes: tuple[str, ...] = ("local-node-1", "local-node-2")) -> None:  # fmt: skip
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
        self._nodes = nodes
        for node in nodes:
            body = {
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
            with contextlib.suppress(ApiStatus):  # already there
                store.create("nodes", None, body)

    def __enter__(self) -> Controllers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
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
        ready = []
        for node in self.store.list("nodes"):
            conditions = (node.get("status") or {}).get("conditions") or []
            if node["metadata"]["name"] in self._nodes and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            ):
                ready.append(node["metadata"]["name"])
        return sorted(ready)

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
        if plural == "pods" and event == "DELETED":
            # Deleted or evicted through the API: its container stops.
            with self._lock:
                pod = self._pods.pop(key, None)
            if pod is not None and pod.backend is not None:
                threading.Thread(target=pod.backend.stop, daemon=True).start()

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
            pods = sorted(self.store.list("pods", namespace, labels=labels), key=lambda p: p["metadata"]["name"])
            wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
            for _ in range(wanted - len(pods)):
                self._create_pod(namespace, name, template, template_hash)
            for pod in pods[wanted:][::-1]:
                self.store.delete("pods", namespace, pod["metadata"]["name"])
            self._deployment_status(namespace, name, deployment)

    def _create_pod(self, namespace: str, deployment: str, template: Mapping[str, Any], template_hash: str) -> None:
        name = f"{deployment}-{template_hash[:5]}-{secrets.token_hex(3)[:5]}"
        nodes = self._ready_nodes()
        # Spread over Ready nodes; with none Ready the pod stays Pending, unscheduled.
        node = nodes[len(self._pods) % len(nodes)] if nodes else ""
        labels = {**template.get("metadata", {}).get("labels", {}), "pod-template-hash": template_hash[:10]}
        self.store.create("pods", namespace, {
            "metadata": {"name": name, "labels": labels,
                         "ownerReferences": [{"kind": "Deployment", "name": deployment}]},
            "spec": {**template.get("spec", {}), "nodeName": node},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        })  # fmt: skip
        with self._lock:
            self._pods[(namespace, name)] = _Pod(name, namespace, deployment, time.monotonic(), node=node)

    def _deployment_status(self, namespace: str, name: str, deployment: Mapping[str, Any]) -> None:
        pods = [p for p in self._owned(namespace, name)]
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
        for pod in pods:
            if not pod.node and ready_nodes:
                pod.node = sorted(ready_nodes)[0]  # scheduled once a node is Ready
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

    def _start(self, pod: _Pod) -> None:
        try:
            template = self.store.get("deployments", pod.namespace, pod.deployment)["spec"]["template"]
            with self._lock:
                address = f"127.0.0.{self._next_address}"
                self._next_address = self._next_address % 250 + 2
            backend = self._backends(pod.name, template, address)
        except Exception:  # noqa: BLE001 (a pod that cannot start stays Pending, as with a crash loop)
            pod.starting = False
            return
        with self._lock:
            if (pod.namespace, pod.name) not in self._pods:
                backend.stop()  # deleted while starting
                return
            pod.backend = backend
            pod.starting = False
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
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
                reference = {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": namespace}
                endpoints.append({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": reference})
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
