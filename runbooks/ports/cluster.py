"""The cluster port: what runbooks read and change in Kubernetes, through the official client.

Runbooks change only what DESIGN.md lets them own: HPA and ScaledObject bounds (never
`replicas`), the mode ConfigMaps' data, leases. Every call's failure is translated here into a
RunbookError naming the object and the fix, or a TransientError for what is worth retrying.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.facts import GPU_RESOURCE, Taint
from runbooks.deadlines import call_timeout
from runbooks.errors import RunbookError
from runbooks.ports.kube_errors import translate
from runbooks.ports.lease_lock import LeaseLock

__all__ = [
    "CALL_TIMEOUT",
    "CORDON_MARK",
    "Bounds",
    "Endpoint",
    "EvictionRefusedError",
    "KubernetesCluster",
    "NodePod",
    "NodeState",
    "bounded_api_client",
]

MODE_KEY = "mode.json"
"""The mode ConfigMap's key (the file the service watches)."""
CORDON_MARK = "peakguard.io/cordoned-by"
"""Annotation on a node this tool cordoned, naming the run: only marked nodes are ours to uncordon."""


@dataclass(frozen=True)
class NodePod:
    namespace: str
    name: str
    owner_kind: str
    """Kind of the controlling owner (ReplicaSet, DaemonSet, ...); empty for a bare pod."""
    mirror: bool
    """A static pod's mirror: the kubelet owns it, eviction cannot move it."""
    phase: str
    grace_seconds: int


@dataclass(frozen=True)
class NodeState:
    """A node as a batch decision reads it."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    unschedulable: bool
    taints: frozenset[str]
    """Keys of its taints."""
    provider_id: str
    gpus: int = 0
    """Allocatable `nvidia.com/gpu`: 0 until the device plugin has registered the node's GPUs."""
    os_image: str = ""
    """What the kubelet reports the machine runs (status.nodeInfo.osImage), e.g. Ubuntu 22.04.5 LTS."""


class EvictionRefusedError(RunbookError):
    """The API refused an eviction with 429: a PodDisruptionBudget, or throttling (told apart)."""

    def __init__(self, message: str, *, budget: str | None, retry_after: float | None) -> None:
        super().__init__(message)
        self.budget = budget
        """The PodDisruptionBudget that blocked it (from the Status causes); None when throttled."""
        self.retry_after = retry_after


@dataclass(frozen=True)
class Bounds:
    min: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max}


@dataclass(frozen=True)
class Endpoint:
    pod: str
    url: str
    """Base URL of the pod's HTTP port, e.g. http://10.0.1.7:8080."""


CALL_TIMEOUT = 10.0
"""Seconds one Kubernetes API call may take at most (less when its step's deadline is nearer)."""


def bounded_api_client(configuration: Any) -> Any:
    """A `kubernetes.client.ApiClient` whose every request has a timeout (`runbooks.deadlines`) and is
    tried once: a hung call fails within its step's time, and the engine decides about retrying."""
    from kubernetes import client  # type: ignore[import-untyped, unused-ignore]

    class _BoundedApiClient(client.ApiClient):  # type: ignore[misc]
        def request(self, method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
            if _request_timeout is None:
                path = url.split("://", 1)[-1].partition("/")[2]
                _request_timeout = call_timeout(CALL_TIMEOUT, doing=f"Kubernetes {method} /{path}")
            return super().request(method, url, *args, _request_timeout=_request_timeout, **kwargs)

    # No urllib3 retries under the timeout: each would get the whole timeout again.
    configuration.retries = 0
    return _BoundedApiClient(configuration)


class KubernetesCluster:
    def __init__(self, api_client: Any) -> None:
        """`api_client` is a configured `kubernetes.client.ApiClient`."""
        from kubernetes import client  # type: ignore[import-untyped, unused-ignore]

        self._apps = client.AppsV1Api(api_client)
        self._autoscaling = client.AutoscalingV2Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self._serialize = api_client.sanitize_for_serialization

    @classmethod
    def from_url(cls, url: str) -> KubernetesCluster:
        """A cluster API at a plain URL (the local drill's)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = url
        return cls(bounded_api_client(configuration))

    @classmethod
    def in_cluster(cls, *, token_file: str | None = None, cert_file: str | None = None,
                   environ: Mapping[str, str] | None = None) -> KubernetesCluster:  # fmt: skip
        """The cluster a pod runs in, as its service account (a CronJob's runbook): the API server
        from $KUBERNETES_SERVICE_HOST/PORT, the token and CA the kubelet mounts. The files and the
        environment are parameters for tests; by default the kubelet's paths and os.environ."""
        from kubernetes import client
        from kubernetes.config import ConfigException, incluster_config  # type: ignore[import-untyped, unused-ignore]

        configuration = client.Configuration()
        try:
            incluster_config.InClusterConfigLoader(
                token_filename=token_file or incluster_config.SERVICE_TOKEN_FILENAME,
                cert_filename=cert_file or incluster_config.SERVICE_CERT_FILENAME,
                environ=os.environ if environ is None else environ,
            ).load_and_set(configuration)
        except ConfigException as exc:
            raise RunbookError(f"cannot use the pod's service account for the Kubernetes API: {exc}") from None
        return cls(bounded_api_client(configuration))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubernetesCluster:
        """The cluster of a kubeconfig context (default: $KUBECONFIG / ~/.kube/config, current context)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            # What config.new_client_from_config does, with our client class around the configuration.
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        except Exception as exc:  # noqa: BLE001 (the loader raises ConfigException, OSError, ValueError...)
            raise RunbookError(
                f"cannot load kubeconfig {path or '(default)'}{f' context {context}' if context else ''}: {exc}; "
                "for EKS: aws eks update-kubeconfig --name <cluster> --region <region>"
            ) from None
        return cls(bounded_api_client(configuration))

    # --- Scaling bounds -------------------------------------------------------------

    def hpa_bounds(self, namespace: str, name: str) -> Bounds:
        hpa = self._call(f"read HPA {namespace}/{name}", self._autoscaling.read_namespaced_horizontal_pod_autoscaler,
                         name, namespace)  # fmt: skip
        return Bounds(min=int(hpa.spec.min_replicas or 1), max=int(hpa.spec.max_replicas))

    def set_hpa_bounds(self, namespace: str, name: str, bounds: Bounds) -> None:
        if not 1 <= bounds.min <= bounds.max:
            raise RunbookError(f"HPA {namespace}/{name}: bounds {bounds.to_dict()} need 1 <= min <= max")
        self._call(f"patch HPA {namespace}/{name} to min {bounds.min} max {bounds.max}",
                   self._autoscaling.patch_namespaced_horizontal_pod_autoscaler, name, namespace,
                   {"spec": {"minReplicas": bounds.min, "maxReplicas": bounds.max}})  # fmt: skip

    def scaled_object_bounds(self, namespace: str, name: str) -> Bounds:
        scaled = self._call(f"read ScaledObject {namespace}/{name}", self._custom.get_namespaced_custom_object,
                            "keda.sh", "v1alpha1", namespace, "scaledobjects", name)  # fmt: skip
        spec = scaled.get("spec", {})
        return Bounds(min=int(spec.get("minReplicaCount", 0)), max=int(spec.get("maxReplicaCount", 100)))

    def set_scaled_object_bounds(self, namespace: str, name: str, bounds: Bounds) -> None:
        if not 0 <= bounds.min <= bounds.max:
            raise RunbookError(f"ScaledObject {namespace}/{name}: bounds {bounds.to_dict()} need 0 <= min <= max")
        self._call(f"patch ScaledObject {namespace}/{name} to min {bounds.min} max {bounds.max}",
                   self._custom.patch_namespaced_custom_object, "keda.sh", "v1alpha1", namespace, "scaledobjects",
                   name, {"spec": {"minReplicaCount": bounds.min, "maxReplicaCount": bounds.max}})  # fmt: skip

    def ready_replicas(self, namespace: str, deployment: str) -> int:
        """Pods of a Deployment that are Ready (its status, as the deployment controller reports it)."""
        return self.replicas(namespace, deployment)[1]

    def replicas(self, namespace: str, deployment: str) -> tuple[int, int]:
        """(wanted, Ready) pods of a Deployment: its spec.replicas and its status's readyReplicas."""
        found = self._call(f"read Deployment {namespace}/{deployment}", self._apps.read_namespaced_deployment_status,
                           deployment, namespace)  # fmt: skip
        wanted = int((found.spec.replicas if found.spec else 0) or 0)
        return wanted, int((found.status.ready_replicas if found.status else 0) or 0)

    # --- The mode ConfigMap -----------------------------------------------------------

    def mode_document(self, namespace: str, name: str) -> dict[str, Any]:
        config_map = self._call(f"read ConfigMap {namespace}/{name}", self._core.read_namespaced_config_map,
                                name, namespace)  # fmt: skip
        text = (config_map.data or {}).get(MODE_KEY)
        if text is None:
            raise RunbookError(f"ConfigMap {namespace}/{name} has no {MODE_KEY}; re-run `pulumi up` to restore it")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunbookError(f"ConfigMap {namespace}/{name}: {MODE_KEY} is not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise RunbookError(f"ConfigMap {namespace}/{name}: {MODE_KEY} must be a JSON object")
        return document

    def set_mode_document(self, namespace: str, name: str, document: dict[str, Any]) -> None:
        text = json.dumps(document, sort_keys=True)
        self._call(f"patch ConfigMap {namespace}/{name}", self._core.patch_namespaced_config_map, name, namespace,
                   {"data": {MODE_KEY: text}})  # fmt: skip

    # --- Pods behind the Service --------------------------------------------------------

    def ready_endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        """Ready pods of a Service, from its EndpointSlices (what kube-proxy and the ALB use)."""
        slices = self._call(f"list EndpointSlices of Service {namespace}/{service}",
                            self._discovery.list_namespaced_endpoint_slice, namespace,
                            label_selector=f"kubernetes.io/service-name={service}")  # fmt: skip
        found = []
        for endpoint_slice in slices.items:
            ports = [p.port for p in (endpoint_slice.ports or []) if p.port]
            port = ports[0] if ports else 8080
            for endpoint in endpoint_slice.endpoints or []:
                if endpoint.conditions is not None and endpoint.conditions.ready is False:
                    continue
                pod = endpoint.target_ref.name if endpoint.target_ref is not None else endpoint.addresses[0]
                for address in endpoint.addresses[:1]:
                    found.append(Endpoint(pod=pod, url=f"http://{address}:{port}"))
        return sorted(found, key=lambda e: e.pod)

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        secret = self._call(f"read Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise RunbookError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data).decode()

    # --- Nodes: cordon, pods, eviction ----------------------------------------------------

    def nodes(self, label_selector: str) -> list[NodeState]:
        found = self._call(f"list Nodes {label_selector}", self._core.list_node, label_selector=label_selector)
        states = []
        for node in found.items:
            conditions = (node.status.conditions if node.status else None) or []
            states.append(NodeState(
                name=node.metadata.name,
                labels=dict(node.metadata.labels or {}),
                ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
                unschedulable=bool(node.spec and node.spec.unschedulable),
                taints=frozenset(t.key for t in ((node.spec.taints if node.spec else None) or [])),
                provider_id=(node.spec.provider_id if node.spec else None) or "",
                gpus=_count(((node.status.allocatable if node.status else None) or {}).get(GPU_RESOURCE)),
                os_image=(node.status.node_info.os_image if node.status and node.status.node_info else None) or "",
            ))  # fmt: skip
        return states

    def taint_node(self, node: str, taint: Taint) -> None:
        """Add `taint` unless the node carries it already; the other taints are kept as they are
        (written with the version read, so a concurrent change is retried, never overwritten)."""
        from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, unused-ignore]

        for _ in range(5):
            found = self._call(f"read Node {node}", self._core.read_node, node)
            taints = [self._serialize(t) for t in ((found.spec.taints if found.spec else None) or [])]
            if any(t["key"] == taint.key and t["effect"] == taint.effect for t in taints):
                return
            added = {"key": taint.key, "value": taint.value, "effect": taint.effect}
            version = found.metadata.resource_version
            patch = {"metadata": {"resourceVersion": version}, "spec": {"taints": [*taints, added]}}
            try:
                self._core.patch_node(node, patch)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise translate(exc, f"taint Node {node}") from exc
            except Exception as exc:
                raise translate(exc, f"taint Node {node}") from exc
        raise RunbookError(f"taint Node {node} with {taint.flag()}: the node kept changing under five attempts")

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (its controller makes a new one); one already gone is what was wanted."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.delete_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise translate(exc, f"delete Pod {namespace}/{name}") from exc
        except Exception as exc:
            raise translate(exc, f"delete Pod {namespace}/{name}") from exc

    def annotate_node(self, node: str, annotations: Mapping[str, str | None]) -> None:
        """Set (or, with None, remove) annotations on a node, leaving the others as they are."""
        self._call(f"annotate Node {node}", self._core.patch_node, node,
                   {"metadata": {"annotations": dict(annotations)}})  # fmt: skip

    def cordon_mark(self, node: str) -> tuple[bool, str | None]:
        """(unschedulable, the run whose cordon it carries, if ours)."""
        found = self._call(f"read Node {node}", self._core.read_node, node)
        annotations = (found.metadata.annotations if found.metadata else None) or {}
        return bool(found.spec and found.spec.unschedulable), annotations.get(CORDON_MARK)

    def cordon(self, node: str, run_id: str) -> None:
        self._call(f"cordon Node {node}", self._core.patch_node, node,
                   {"metadata": {"annotations": {CORDON_MARK: run_id}}, "spec": {"unschedulable": True}})  # fmt: skip

    def uncordon(self, node: str, run_id: str) -> None:
        """Lift this run's cordon; a node not carrying `run_id`'s mark is refused, never touched."""
        _, mark = self.cordon_mark(node)
        if mark != run_id:
            raise RunbookError(f"Node {node} does not carry run {run_id}'s cordon (mark: {mark!r}); left as it is")
        self._call(f"uncordon Node {node}", self._core.patch_node, node,
                   {"metadata": {"annotations": {CORDON_MARK: None}}, "spec": {"unschedulable": False}})  # fmt: skip

    def pods_on(self, node: str) -> list[NodePod]:
        found = self._call(f"list Pods on Node {node}", self._core.list_pod_for_all_namespaces,
                           field_selector=f"spec.nodeName={node}")  # fmt: skip
        pods = []
        for pod in found.items:
            meta = pod.metadata
            owner = next((o.kind for o in (meta.owner_references or []) if o.controller), "")
            pods.append(NodePod(
                namespace=meta.namespace, name=meta.name, owner_kind=owner or "",
                mirror="kubernetes.io/config.mirror" in (meta.annotations or {}),
                phase=(pod.status.phase if pod.status else None) or "Pending",
                grace_seconds=int((pod.spec.termination_grace_period_seconds if pod.spec else None) or 30),
            ))  # fmt: skip
        return pods

    def pod_exists(self, namespace: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, unused-ignore]

        try:
            self._core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise translate(exc, f"read Pod {namespace}/{name}") from exc
        return True

    def evict(self, namespace: str, name: str) -> None:
        """Ask the Eviction API to move one pod; EvictionRefusedError on 429, with the blocking budget named."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
        try:
            self._core.create_namespaced_pod_eviction(name, namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                return  # already gone: what an eviction wants
            if exc.status != 429:
                raise translate(exc, f"evict Pod {namespace}/{name}") from exc
            raise _refusal(exc, namespace, name) from exc

    def lease_lock(self, *, env: str, namespace: str) -> LeaseLock:
        return LeaseLock(self.coordination, env=env, namespace=namespace)

    # --- Errors ---------------------------------------------------------------------

    def _call(self, doing: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            raise translate(exc, doing) from exc


def _count(quantity: Any) -> int:
    """A whole-device quantity ("8") as a number; anything else as 0."""
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def _refusal(exc: Any, namespace: str, name: str) -> EvictionRefusedError:
    """A 429 read the way kubectl drain reads it: a DisruptionBudget cause means a budget refused;
    anything else is the API server throttling (Retry-After says when to come back)."""
    try:
        status = json.loads(exc.body or "{}")
    except ValueError:
        status = {}
    causes = (status.get("details") or {}).get("causes") or []
    budget_cause = next((c for c in causes if c.get("reason") == "DisruptionBudget"), None)
    headers = getattr(exc, "headers", None) or {}
    retry_after = headers.get("Retry-After")
    seconds = float(retry_after) if retry_after and str(retry_after).isdigit() else None
    if budget_cause is not None:
        message = budget_cause.get("message", "")
        budget = message.split("disruption budget ", 1)[1].split()[0] if "disruption budget " in message else "?"
        return EvictionRefusedError(
            f"eviction of Pod {namespace}/{name} refused by PodDisruptionBudget {budget}: {message}",
            budget=budget,
            retry_after=seconds,
        )
    return EvictionRefusedError(
        f"eviction of Pod {namespace}/{name} throttled by the API server (429): {status.get('message', '')}",
        budget=None,
        retry_after=seconds or 1.0,
    )
