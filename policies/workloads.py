"""How the Kubernetes objects of a stack relate: which autoscaler scales a Deployment (and between
what bounds), which PodDisruptionBudget guards it, which accelerators its pods ask for."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from infra.facts import GPU_RESOURCE
from policies.findings import Resource
from policies.wire import mapping, of_type, sequence

__all__ = [
    "DEPLOYMENT",
    "HPA",
    "PDB",
    "SCALED_OBJECT",
    "Scaling",
    "accelerators",
    "containers",
    "guarding_budgets",
    "scaling_of",
]

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
_MIG_RESOURCE = re.compile(r"nvidia\.com/mig-(\d+)g\.\d+gb")
_COMPUTE_SLICES_PER_GPU = 7
"""A100, H100 and H200 split into 7 compute slices; 7 // N instances of an Ng profile fit on one GPU."""


@dataclass(frozen=True)
class Scaling:
    autoscaler: Resource | None
    """The HPA or ScaledObject; None when the Deployment's own replicas decide."""
    fewest: Any
    most: Any

    @property
    def scales_from_zero(self) -> bool:
        return bool(self.fewest == 0)


def _namespace(resource: Resource) -> Any:
    return resource.get("metadata.namespace")


def scaling_of(deployment: Resource, resources: Sequence[Resource]) -> Scaling:
    name = deployment.get("metadata.name")
    for autoscaler in of_type(resources, HPA, SCALED_OBJECT):
        target = mapping(autoscaler.get("spec.scaleTargetRef"))
        if target.get("name") == name and _namespace(autoscaler) == _namespace(deployment):
            if autoscaler.type == HPA:
                fewest = autoscaler.get("spec.minReplicas")
                return Scaling(autoscaler, 1 if fewest is None else fewest, autoscaler.get("spec.maxReplicas"))
            fewest = autoscaler.get("spec.minReplicaCount")
            return Scaling(
                autoscaler,
                0 if fewest is None else fewest,
                100 if autoscaler.get("spec.maxReplicaCount") is None else autoscaler.get("spec.maxReplicaCount"),
            )
    replicas = deployment.get("spec.replicas")
    replicas = 1 if replicas is None else replicas
    return Scaling(None, replicas, replicas)


def _selects(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    wanted = mapping(selector.get("matchLabels"))
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def guarding_budgets(deployment: Resource, resources: Sequence[Resource]) -> list[Resource]:
    """The PodDisruptionBudgets whose selector matches the Deployment's pods."""
    labels = mapping(deployment.get("spec.template.metadata.labels"))
    return [
        budget
        for budget in of_type(resources, PDB)
        if _namespace(budget) == _namespace(deployment) and _selects(mapping(budget.get("spec.selector")), labels)
    ]


def containers(deployment: Resource) -> list[tuple[str, Mapping[str, Any]]]:
    """Every container of the pod template with its path, init containers included."""
    found = []
    for field in ("initContainers", "containers"):
        for index, container in enumerate(sequence(deployment.get(f"spec.template.spec.{field}"))):
            found.append((f"spec.template.spec.{field}[{index}]", mapping(container)))
    return found


def accelerators(deployment: Resource) -> Fraction:
    """GPUs one replica takes (a MIG slice counts as its share of a GPU, exactly); 0 for none."""
    total = Fraction(0)
    for _, container in containers(deployment):
        for resource, amount in mapping(mapping(container.get("resources")).get("limits")).items():
            if resource == GPU_RESOURCE:
                total += Fraction(str(amount)).limit_denominator()
            elif match := _MIG_RESOURCE.fullmatch(resource):
                total += Fraction(str(amount)).limit_denominator() / (_COMPUTE_SLICES_PER_GPU // int(match[1]))
    return total
