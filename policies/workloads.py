"""How the Kubernetes objects of a stack relate: which autoscaler scales a Deployment (and between
what bounds), which PodDisruptionBudget guards it, which accelerators its pods ask for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from infra.facts import GPU_RESOURCE, MIG_RESOURCE_PREFIX
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


def accelerators(deployment: Resource) -> dict[str, Fraction]:
    """The accelerators one replica asks for, by extended resource (`nvidia.com/gpu`, or a MIG
    profile's `nvidia.com/mig-1g.10gb`); empty for none. A MIG instance is counted in its own unit:
    how many fit on a GPU depends on the GPU's memory (facts.MIG_INSTANCES_PER_GPU), not on its name."""
    total: dict[str, Fraction] = {}
    for _, container in containers(deployment):
        for resource, amount in mapping(mapping(container.get("resources")).get("limits")).items():
            if resource == GPU_RESOURCE or str(resource).startswith(MIG_RESOURCE_PREFIX):
                total[resource] = total.get(resource, Fraction(0)) + Fraction(str(amount)).limit_denominator()
    return {resource: amount for resource, amount in total.items() if amount}
