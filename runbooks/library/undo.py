"""What a person does to put a step back by hand, when the rollback could not: each note names the
object, the field and the value, with the command that sets it. Shared by the runbooks' `Step.undo`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from infra.targets import hold_parameter_name
from runbooks.engine.spec import Context
from runbooks.library.service_gates import ports_of

__all__ = ["bounds", "hold", "mode", "node_groups"]


def hold(context: Context, before: Any) -> str:
    """The incident hold (SSM) as it was: absent, or another run's document."""
    name = hold_parameter_name(context.env)
    if before is None:
        return f"SSM parameter {name} (the incident hold): delete it: aws ssm delete-parameter --name {name}"
    document = json.dumps(before, sort_keys=True)
    return (f"SSM parameter {name}: value {document}: "
            f"aws ssm put-parameter --overwrite --type String --name {name} --value '{document}'")  # fmt: skip


def node_groups(context: Context, before: Mapping[str, Mapping[str, int]]) -> str:
    """EKS node groups' scaling config as it was."""
    cluster = ports_of(context).targets.cluster.name
    return (
        "; ".join(
            f"EKS node group {cluster}/{group}: scalingConfig minSize={size['min']} desiredSize={size['desired']} "
            f"maxSize={size['max']}: aws eks update-nodegroup-config --cluster-name {cluster} --nodegroup-name {group} "
            f"--scaling-config minSize={size['min']},maxSize={size['max']},desiredSize={size['desired']}"
            for group, size in sorted(before.items())
        )
        or "nothing: no node group of this pool"
    )


def bounds(context: Context, kind: str, name: str, before: Mapping[str, int] | None) -> str:
    """An HPA's or a KEDA ScaledObject's replica bounds as they were (`max` may be left out: as it is)."""
    namespace = ports_of(context).namespace
    if before is None:
        return f"nothing: {kind} {name} does not exist in {namespace}"
    hpa = kind == "HorizontalPodAutoscaler"
    names = {"min": "minReplicas" if hpa else "minReplicaCount", "max": "maxReplicas" if hpa else "maxReplicaCount"}
    spec = {names[key]: value for key, value in before.items() if key in names}
    fields = " ".join(f"spec.{field}={value}" for field, value in spec.items())
    patch = json.dumps({"spec": spec})
    resource = "hpa" if hpa else "scaledobject"
    return (
        f"{kind} {namespace}/{name}: {fields}: kubectl -n {namespace} patch {resource} {name} --type merge -p '{patch}'"
    )


def mode(context: Context, variant: str, fields: Mapping[str, Any]) -> str:
    """A variant's operating mode as it was: its ConfigMap, and every ready pod of it (the pods keep
    the other mode until told, or until the kubelet syncs the ConfigMap a minute or more later)."""
    ports = ports_of(context)
    namespace, config_map = ports.namespace, ports.model_service.mode_config_maps[variant]
    values = json.dumps(dict(fields), sort_keys=True)
    deployment = ports.model_service.deployments[variant]
    return (f"ConfigMap {namespace}/{config_map} key mode.json: set {values} (keep its other keys); then PUT "
            f"/admin/mode with {values} to every ready {variant} pod (admin token from Secret "
            f"{namespace}/{ports.model_service.admin_token_secret}), or restart them: "
            f"kubectl -n {namespace} rollout restart deployment {deployment}")  # fmt: skip
