"""The cluster port: what runbooks read and change in Kubernetes, through the official client.

Runbooks change only what DESIGN.md lets them own: HPA and ScaledObject bounds (never
`replicas`), the mode ConfigMaps' data, leases. Every call's failure is translated here into a
RunbookError naming the object and the fix, or a TransientError for what is worth retrying.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from runbooks.errors import RunbookError
from runbooks.kube_errors import translate
from runbooks.lease_lock import LeaseLock

__all__ = ["Bounds", "Endpoint", "KubernetesCluster"]

MODE_KEY = "mode.json"
"""The mode ConfigMap's key (the file the service watches)."""


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

    @classmethod
    def from_url(cls, url: str) -> KubernetesCluster:
        """A cluster API at a plain URL (the local drill's)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = url
        return cls(client.ApiClient(configuration))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubernetesCluster:
        """The cluster of a kubeconfig context (default: $KUBECONFIG / ~/.kube/config, current context)."""
        from kubernetes import client, config

        try:
            api_client = config.new_client_from_config(config_file=path, context=context)
        except Exception as exc:  # noqa: BLE001 (the loader raises ConfigException, OSError, ValueError...)
            raise RunbookError(
                f"cannot load kubeconfig {path or '(default)'}{f' context {context}' if context else ''}: {exc}; "
                "for EKS: aws eks update-kubeconfig --name <cluster> --region <region>"
            ) from None
        assert isinstance(api_client, client.ApiClient)
        return cls(api_client)

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
        found = self._call(f"read Deployment {namespace}/{deployment}", self._apps.read_namespaced_deployment_status,
                           deployment, namespace)  # fmt: skip
        return int((found.status.ready_replicas if found.status else 0) or 0)

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

    def lease_lock(self, *, env: str, namespace: str) -> LeaseLock:
        return LeaseLock(self.coordination, env=env, namespace=namespace)

    # --- Errors ---------------------------------------------------------------------

    def _call(self, doing: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            raise translate(exc, doing) from exc
