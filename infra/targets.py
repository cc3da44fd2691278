"""The targets document: what the runbooks act on, as published by the Pulumi program.

`infra` writes it to SSM Parameter Store at `/peakguard/<env>/targets` (and as a stack output);
`runbooks` read it with boto3 at incident time, so an incident never waits on the Pulumi
backend. The schema lives here once, versioned, with no Pulumi import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "ClusterTarget",
    "ModelServiceTarget",
    "NodeGroupTarget",
    "TargetsDocument",
    "TargetsDocumentError",
    "freeze_parameter_name",
    "hold_parameter_name",
    "parameter_name",
]

SCHEMA_VERSION = 2
"""Bump on any change a reader of the previous version would misread."""

SYSTEM_POOL = "system"
"""Pool name of the CPU node group that runs the cluster add-ons."""


def parameter_name(env: str) -> str:
    """SSM parameter that holds an environment's targets document."""
    return f"/peakguard/{env}/targets"


def freeze_parameter_name(env: str) -> str:
    """The change freeze a person sets: while present, every runbook refuses (unless overridden)."""
    return f"/peakguard/{env}/change-freeze"


RUNBOOK_LOCK = "peakguard-runbook-lock"
"""The Lease in the model service's namespace that one runbook runner holds at a time
(runbooks/ports/lease_lock.py); the predictive-scale CronJob's Role names it."""


def hold_parameter_name(env: str) -> str:
    """The incident hold a runbook sets while it holds temporary overrides: `pulumi up` refuses."""
    return f"/peakguard/{env}/incident-hold"


class TargetsDocumentError(ValueError):
    """The targets document is missing a field, has a wrong type or an unknown schema version."""


@dataclass(frozen=True)
class ClusterTarget:
    name: str
    """EKS cluster name."""
    endpoint: str
    """Kubernetes API server URL."""
    region: str
    """AWS region of the cluster."""


@dataclass(frozen=True)
class NodeGroupTarget:
    pool: str
    """GPU pool name (e.g. full, mig), or `system` for the CPU add-on group."""
    availability_zone: str | None
    """The group's single AZ; None for the system group, which spans all AZs."""
    name: str
    """EKS managed node group name."""
    autoscaling_group: str
    """The Auto Scaling group EKS created under it (read-only to us: EKS owns it)."""
    instance_type: str
    """EC2 instance type of the group's nodes."""
    generation: str | None = None
    """blue or green for a GPU group (each pool and AZ has up to two); None for the system group."""
    serving: bool = True
    """False for the incoming generation while a rolling upgrade is declared (`next` in the stack config)."""
    mig_config: str | None = None
    """The nodes' MIG layout (`nvidia.com/mig.config`, e.g. all-1g.10gb); None where the GPUs have no MIG.
    With the instance type it says how many replicas of each size a node holds (facts.InstanceType.accelerators)."""


@dataclass(frozen=True)
class ModelServiceTarget:
    """The model service's Kubernetes objects, as the runbooks address them."""

    namespace: str
    deployments: Mapping[str, str]
    """Deployment name by variant: full, canary, and light where the env has a MIG pool."""
    hpa: str
    """HorizontalPodAutoscaler of the full Deployment (runbooks move its bounds)."""
    scaled_objects: Mapping[str, str]
    """KEDA ScaledObject by variant (light, canary), idling at zero; runbooks raise their minimum."""
    mode_config_maps: Mapping[str, str]
    """Mode ConfigMap by variant (key `mode.json`); each variant's pods read their own."""
    admin_token_secret: str
    """Secret (key `token`) with the bearer token of the pods' admin API."""
    service: str
    url: str
    """In-cluster URL of the Service (all variants)."""
    pools: Mapping[str, str] = field(default_factory=dict)
    """GPU pool by variant (full, canary, light): whose node groups hold its pods."""
    gpus_per_replica: int = 1
    slo_p99_ms: int = 1000
    """The latency SLO runbooks verify against."""
    ingress: str = ""
    """The Ingress in front of the Service: its ALB target group's RequestCount is the request rate's
    history (predictive-scale). Empty in documents written before it was published."""
    replicas: Mapping[str, int] = field(default_factory=dict)
    """The full Deployment's HPA bounds as the stack declares them (`min`, `max`): predictive-scale
    never sets the minimum below the declared one nor above the declared maximum. Empty in older
    documents."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pools": dict(self.pools),
            "gpusPerReplica": self.gpus_per_replica,
            "sloP99Ms": self.slo_p99_ms,
            "ingress": self.ingress,
            "replicas": dict(self.replicas),
            "namespace": self.namespace,
            "deployments": dict(self.deployments),
            "hpa": self.hpa,
            "scaledObjects": dict(self.scaled_objects),
            "modeConfigMaps": dict(self.mode_config_maps),
            "adminTokenSecret": self.admin_token_secret,
            "service": self.service,
            "url": self.url,
        }


@dataclass(frozen=True)
class TargetsDocument:
    env: str
    cluster: ClusterTarget
    node_groups: tuple[NodeGroupTarget, ...]
    model_service: ModelServiceTarget | None = None
    """The Kubernetes side: namespace, Deployments, HPA, ScaledObjects, ConfigMaps, Service URL."""
    chaos_experiments: Mapping[str, str] = field(default_factory=dict)
    """AWS FIS experiment template id by experiment name (`infra/chaos.py`; `chaos-drill` starts
    one). Empty where the stack declares no chaos, and in documents written before it was published."""
    schema_version: int = field(default=SCHEMA_VERSION)

    def node_groups_of(self, pool: str) -> tuple[NodeGroupTarget, ...]:
        """The groups that hold the pool's capacity: its serving generation."""
        return tuple(group for group in self.node_groups if group.pool == pool and group.serving)

    def incoming_of(self, pool: str) -> tuple[NodeGroupTarget, ...]:
        """The pool's declared, not yet serving generation: where a rolling upgrade moves nodes to."""
        return tuple(group for group in self.node_groups if group.pool == pool and not group.serving)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["model_service"] = self.model_service.to_dict() if self.model_service else None
        return {
            "schemaVersion": raw["schema_version"],
            "env": raw["env"],
            "cluster": raw["cluster"],
            "nodeGroups": [
                {
                    "pool": group["pool"],
                    "availabilityZone": group["availability_zone"],
                    "name": group["name"],
                    "autoscalingGroup": group["autoscaling_group"],
                    "instanceType": group["instance_type"],
                    "generation": group["generation"],
                    "serving": group["serving"],
                    "migConfig": group["mig_config"],
                }
                for group in raw["node_groups"]
            ],
            "modelService": raw["model_service"],
            "chaosExperiments": dict(self.chaos_experiments),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "targets document") -> TargetsDocument:
        """Parse and check a document; errors name `source` (e.g. the SSM parameter)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetsDocumentError(f"{source}: not JSON ({exc})") from None
        return cls.from_dict(raw, source=source)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "targets document") -> TargetsDocument:
        def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise TargetsDocumentError(f"{source}: {where}{key} is missing")
            if not isinstance(obj[key], kind):
                raise TargetsDocumentError(
                    f"{source}: {where}{key} must be {getattr(kind, '__name__', kind)}, got {obj[key]!r}"
                )
            return obj[key]

        version = need(raw, "schemaVersion", int, "")
        if version != SCHEMA_VERSION:
            raise TargetsDocumentError(
                f"{source}: schemaVersion {version} is not the {SCHEMA_VERSION} this peakguard reads; "
                "upgrade peakguard or re-run `pulumi up` with this version"
            )
        cluster = need(raw, "cluster", dict, "")
        groups = []
        for index, group in enumerate(need(raw, "nodeGroups", list, "")):
            where = f"nodeGroups[{index}]."
            groups.append(
                NodeGroupTarget(
                    pool=need(group, "pool", str, where),
                    availability_zone=need(group, "availabilityZone", (str, type(None)), where),
                    name=need(group, "name", str, where),
                    autoscaling_group=need(group, "autoscalingGroup", str, where),
                    instance_type=need(group, "instanceType", str, where),
                    generation=need(group, "generation", (str, type(None)), where),
                    serving=need(group, "serving", bool, where),
                    # Optional: documents written before it was published have none.
                    mig_config=need(group, "migConfig", (str, type(None)), where) if "migConfig" in group else None,
                )
            )
        model_service = None
        service = raw.get("modelService")
        if service is not None:
            if not isinstance(service, dict):
                raise TargetsDocumentError(f"{source}: modelService must be an object or null")
            names = "modelService."

            def names_map(key: str) -> dict[str, str]:
                value = need(service, key, dict, names)
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                    raise TargetsDocumentError(f"{source}: {names}{key} must map names to strings")
                return dict(value)

            model_service = ModelServiceTarget(
                namespace=need(service, "namespace", str, names),
                deployments=names_map("deployments"),
                hpa=need(service, "hpa", str, names),
                scaled_objects=names_map("scaledObjects"),
                mode_config_maps=names_map("modeConfigMaps"),
                admin_token_secret=need(service, "adminTokenSecret", str, names),
                service=need(service, "service", str, names),
                url=need(service, "url", str, names),
                pools=names_map("pools"),
                gpus_per_replica=need(service, "gpusPerReplica", int, names),
                slo_p99_ms=need(service, "sloP99Ms", int, names),
                ingress=str(service.get("ingress", "")),
                replicas={k: int(v) for k, v in service.get("replicas", {}).items()},
            )
        return cls(
            env=need(raw, "env", str, ""),
            cluster=ClusterTarget(
                name=need(cluster, "name", str, "cluster."),
                endpoint=need(cluster, "endpoint", str, "cluster."),
                region=need(cluster, "region", str, "cluster."),
            ),
            node_groups=tuple(groups),
            model_service=model_service,
            chaos_experiments=_names(raw.get("chaosExperiments", {}), source, "chaosExperiments"),
            schema_version=version,
        )


def _names(value: Any, source: str, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TargetsDocumentError(f"{source}: {key} must map names to strings, got {value!r}")
    return dict(value)
