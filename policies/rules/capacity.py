"""Capacity: autoscaling reaches the expected peak with 30% headroom, and scales up at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

from infra.facts import INSTANCE_TYPES, MIG_CONFIG_LABEL, capacity_with_headroom
from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import POOL_LABEL, is_serving, mapping, of_type, sequence
from policies.workloads import DEPLOYMENT, HPA, SCALED_OBJECT, accelerators, scaling_of

__all__ = ["EXPECTED_PEAK_ANNOTATION", "RULES"]

EXPECTED_PEAK_ANNOTATION = "peakguard.io/expected-peak-replicas"
"""Set by the Pulumi program on the HPA from the stack config, so the analyzer can check headroom."""
_LONGEST_SCALE_UP_WINDOW = 15


def _hpa_headroom(resource: Resource) -> list[Violation]:
    annotations = resource.get("metadata.annotations")
    peak = mapping(annotations).get(EXPECTED_PEAK_ANNOTATION)
    maximum = resource.get("spec.maxReplicas")
    if UNKNOWN in (annotations, peak, maximum):
        return [Violation("spec.maxReplicas", None, "known, with the expected peak", "", status="not-evaluated")]
    if peak is None:
        return [
            Violation(
                f"metadata.annotations[{EXPECTED_PEAK_ANNOTATION}]",
                None,
                "the expected peak replicas",
                "annotate the HPA with the expected peak (infra/model_workload.py does): without it "
                "the headroom cannot be checked",
            )
        ]
    if maximum is None:
        return [Violation("spec.maxReplicas", None, "set", "set max_replicas")]
    needed = capacity_with_headroom(int(peak))
    if int(maximum) < needed:
        return [
            Violation(
                "spec.maxReplicas",
                maximum,
                f">= ceil(1.3 x {peak}) = {needed}",
                f"raise peakguard:kubernetes.modelService.maxReplicas to {needed}",
            )
        ]
    return []


def _hpa_scale_up(resource: Resource) -> list[Violation]:
    window = resource.get("spec.behavior.scaleUp.stabilizationWindowSeconds")
    if window is UNKNOWN:
        return [
            Violation("spec.behavior.scaleUp.stabilizationWindowSeconds", None, "known", "", status="not-evaluated")
        ]
    if window is not None and int(window) > _LONGEST_SCALE_UP_WINDOW:
        return [
            Violation(
                "spec.behavior.scaleUp.stabilizationWindowSeconds",
                window,
                f"<= {_LONGEST_SCALE_UP_WINDOW}",
                "set it to 0: scale up on the first reading",
            )
        ]
    return []


_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def _accelerators_per_node(group: Resource, templates: dict[object, Resource]) -> dict[str, int] | None:
    """What one node of the group advertises (GPUs, or MIG instances of its layout); None if unknown."""
    template = templates.get(group.get("launchTemplate.id"))
    kind = template.get("instanceType") if template is not None else None
    if not known(kind):
        kinds = sequence(group.get("instanceTypes"))
        kind = kinds[0] if kinds else None
    instance = INSTANCE_TYPES.get(kind) if isinstance(kind, str) else None
    layout = mapping(group.get("labels")).get(MIG_CONFIG_LABEL)
    if instance is None or not (layout is None or isinstance(layout, str)):
        return None
    try:
        return instance.accelerators(layout)
    except ValueError:  # a layout the GPU has not: the config loader refuses it, a hand-made stack may not
        return None


def _pool_fits_the_maximum(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    templates = {t.get("id"): t for t in of_type(resources, _LAUNCH_TEMPLATE) if known(t.get("id"))}
    found = []
    for deployment in of_type(resources, DEPLOYMENT):
        per_replica = accelerators(deployment)
        scaling = scaling_of(deployment, resources)
        if not per_replica or scaling.autoscaler is None:
            continue
        pool = mapping(deployment.get("spec.template.spec.nodeSelector")).get(POOL_LABEL)
        groups = [
            g
            for g in of_type(resources, _NODE_GROUP)
            if mapping(g.get("labels")).get(POOL_LABEL) == pool and is_serving(g)
        ]
        nodes = [(_accelerators_per_node(g, templates), g.get("scalingConfig.maxSize")) for g in groups]
        if not known(scaling.most) or any(n is None or not known(size) for n, size in nodes):
            found.append(
                (
                    scaling.autoscaler,
                    Violation("pool capacity", None, "known instance types and sizes", "", status="not-evaluated"),
                )
            )
            continue
        fits = min(
            math.floor(sum((n or {}).get(resource, 0) * int(size) for n, size in nodes) / amount)
            for resource, amount in per_replica.items()
        )
        if fits < int(scaling.most):
            asks = ", ".join(f"{amount} {resource}" for resource, amount in sorted(per_replica.items()))
            found.append(
                (
                    scaling.autoscaler,
                    Violation(
                        "maximum replicas",
                        int(scaling.most),
                        f"<= what pool {pool!r} holds at its node groups' maxSize ({fits} replicas of {asks})",
                        f"raise peakguard:gpuPools.{pool}.scalingPerAz.maxSize, or lower the maximum replicas",
                    ),
                )
            )
    return found


RULES = (
    Rule(
        id="CAP-001",
        name="hpa-leaves-30-percent-headroom",
        domain="capacity",
        severity="mandatory",
        rationale="without 30% over the expected peak the HPA tops out during the surge (the seed's outage).",
        resource_types=("kubernetes:autoscaling/v2:HorizontalPodAutoscaler",),
        check=_hpa_headroom,
    ),
    Rule(
        id="CAP-002",
        name="hpa-scales-up-at-once",
        domain="capacity",
        severity="mandatory",
        rationale="a long scale-up stabilisation window is the seed's 3-minute scaling lag.",
        resource_types=("kubernetes:autoscaling/v2:HorizontalPodAutoscaler",),
        check=_hpa_scale_up,
    ),
    Rule(
        id="CAP-003",
        name="gpu-pool-holds-the-maximum-replicas",
        domain="capacity",
        severity="mandatory",
        rationale="an autoscaler allowed more replicas than the pool's nodes can hold leaves them Pending when "
        "the surge comes: headroom on paper only.",
        resource_types=(DEPLOYMENT, HPA, SCALED_OBJECT, _NODE_GROUP, _LAUNCH_TEMPLATE),
        stack_check=_pool_fits_the_maximum,
    ),
)
