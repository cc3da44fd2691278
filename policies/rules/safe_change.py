"""Safe change: no rollout or drain takes more than a third of the capacity at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

from infra.facts import MAX_UNAVAILABLE_PERCENTAGE, max_batch
from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import mapping, of_type, stack_env
from policies.workloads import DEPLOYMENT, HPA, PDB, SCALED_OBJECT, guarding_budgets, scaling_of

__all__ = ["NO_CAPACITY_ANNOTATION", "RULES"]

_THIRD = MAX_UNAVAILABLE_PERCENTAGE
_DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
NO_CAPACITY_ANNOTATION = "peakguard.io/rollout-takes-no-capacity"
"""On a DaemonSet that may roll faster than a third of its nodes: why its pods going takes no
serving capacity (a gate that idles on serving nodes, say). The reason is the value."""


def _node_group_batch(resource: Resource) -> list[Violation]:
    percent = resource.get("updateConfig.maxUnavailablePercentage")
    absolute = resource.get("updateConfig.maxUnavailable")
    if UNKNOWN in (percent, absolute):
        return [Violation("updateConfig", None, "known", "", status="not-evaluated")]
    if percent is None and absolute is None:
        return [
            Violation(
                "updateConfig.maxUnavailablePercentage",
                None,
                f"<= {_THIRD}",
                f"set update_config=NodeGroupUpdateConfigArgs(max_unavailable_percentage={_THIRD}); "
                "EKS's default is one node, but say it",
            )
        ]
    if percent is not None and float(percent) > _THIRD:
        where = (
            "gpuPools.<pool>.maxUnavailablePercentage"
            if "gpu" in resource.name
            else "the system node group's update_config (infra/cluster.py)"
        )
        fix = f"lower it to {_THIRD} ({where})"
        return [Violation("updateConfig.maxUnavailablePercentage", percent, f"<= {_THIRD}", fix)]
    size = resource.get("scalingConfig.maxSize")
    if absolute is not None and size is UNKNOWN:
        return [Violation("scalingConfig.maxSize", None, "known", "", status="not-evaluated")]
    if absolute is not None and known(size) and int(absolute) > max(1, max_batch(int(size))):
        return [
            Violation(
                "updateConfig.maxUnavailable",
                absolute,
                f"<= floor(maxSize/3) = {max(1, max_batch(int(size)))}",
                "use max_unavailable_percentage=33 instead of an absolute count",
            )
        ]
    return []


def _daemon_set_batch(resource: Resource) -> list[Violation]:
    """A DaemonSet's pods run on every node of its pool: rolling them is rolling the pool."""
    kind = resource.get("spec.updateStrategy.type")
    unavailable = resource.get("spec.updateStrategy.rollingUpdate.maxUnavailable")
    annotations = resource.get("metadata.annotations")
    if UNKNOWN in (kind, unavailable, annotations):
        return [Violation("spec.updateStrategy", None, "known", "", status="not-evaluated")]
    if kind == "OnDelete" or unavailable is None:
        return []  # nothing rolls by itself; or Kubernetes' default, one node at a time
    too_many = _percent(unavailable) > _THIRD if isinstance(unavailable, str) else int(unavailable) > 1
    reason = mapping(annotations).get(NO_CAPACITY_ANNOTATION)
    if not too_many or (isinstance(reason, str) and reason.strip()):
        return []
    return [
        Violation(
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
            unavailable,
            f"<= {_THIRD}% (or 1 node)",
            f'lower it to "{_THIRD}%", or, if its pods going takes no serving capacity, say why in the '
            f"annotation {NO_CAPACITY_ANNOTATION}",
        )
    ]


def _rollout_share(deployment: Resource, resources: Sequence[Resource]) -> Violation | None:
    path = "spec.strategy.rollingUpdate.maxUnavailable"
    strategy = deployment.get(path)
    fewest = scaling_of(deployment, resources).fewest
    if UNKNOWN in (strategy, fewest):
        return Violation(path, None, "known", "", status="not-evaluated")
    if strategy is None:
        return Violation(
            path, None, "set, <= 33%", 'set rolling_update=RollingUpdateDeploymentArgs(max_unavailable="25%")'
        )
    if isinstance(strategy, str):
        # The deployment controller rounds maxUnavailable percentages down, so 33% is at most a third.
        fix = 'set max_unavailable="25%" in the rolling update (infra/model_workload.py)'
        return Violation(path, strategy, f"<= {_THIRD}%", fix) if _percent(strategy) > _THIRD else None
    if int(strategy) > max_batch(int(fewest)):
        return Violation(
            path,
            int(strategy),
            f"<= a third of the fewest replicas ({int(fewest)})",
            'use a percentage ("25%"), which scales with the replicas',
        )
    return None


def _deployment_rollout(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    return [(d, v) for d in of_type(resources, DEPLOYMENT) if (v := _rollout_share(d, resources)) is not None]


def _percent(value: str) -> int:
    return int(value.rstrip("%"))


def _budget_share(budget: Resource, deployment: Resource, resources: Sequence[Resource]) -> Violation | None:
    """What more than a third unavailable looks like for this budget and the fewest replicas kept."""
    scaling = scaling_of(deployment, resources)
    fewest, unavailable, available = scaling.fewest, budget.get("spec.maxUnavailable"), budget.get("spec.minAvailable")
    if UNKNOWN in (fewest, unavailable, available):
        return Violation("spec.maxUnavailable", None, "known at preview", "", status="not-evaluated")
    if unavailable is None and available is None:
        return Violation("spec.maxUnavailable", None, f"<= {_THIRD}% of the replicas", "set maxUnavailable")
    # The disruption controller rounds a budget's percentage up ("33%" of 4 pods lets 2 go), so a
    # percentage is judged as the pod count it becomes for the fewest replicas kept.
    if isinstance(unavailable, str):
        unavailable = math.ceil(_percent(unavailable) * int(fewest) / 100)
    elif unavailable is None:
        needed = math.ceil(_percent(available) * int(fewest) / 100) if isinstance(available, str) else int(available)
        unavailable = int(fewest) - needed
    fewest, unavailable = int(fewest), int(unavailable)
    if scaling.scales_from_zero and unavailable <= 1:
        return None  # a standby variant: one pod at a time, so a drain can always proceed
    if fewest >= 3 and unavailable <= max_batch(fewest):
        return None
    if fewest < 3 and stack_env(resources) != "prod" and unavailable <= 1:
        return None  # dev runs one replica on purpose; a drain there may take it
    if scaling.autoscaler is None:
        where = "the Deployment's replicas"
    elif scaling.autoscaler.type == HPA:
        where = "the HPA's minReplicas (modelService.minReplicas)"
    else:
        where = "the ScaledObject's minReplicaCount"
    fix = (
        f"raise {where} to >= 3, so one pod can be evicted without losing more than a third"
        if fewest < 3
        else f"set maxUnavailable to {max_batch(fewest)} (a third of {fewest}, rounded down, as a count)"
    )
    return Violation("spec.maxUnavailable", unavailable, f"<= a third of the fewest replicas ({fewest})", fix)


def _budget_a_third(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    found = []
    for deployment in of_type(resources, DEPLOYMENT):
        for budget in guarding_budgets(deployment, resources):
            violation = _budget_share(budget, deployment, resources)
            if violation is not None:
                found.append((budget, violation))
    return found


RULES = (
    Rule(
        id="SAFE-001",
        name="node-group-rolls-a-third-at-most",
        domain="safe change",
        severity="mandatory",
        rationale="a rolling upgrade of more than a third of the nodes takes the service down at peak.",
        resource_types=("aws:eks/nodeGroup:NodeGroup",),
        check=_node_group_batch,
    ),
    Rule(
        id="SAFE-002",
        name="deployment-rolls-a-third-at-most",
        domain="safe change",
        severity="mandatory",
        rationale="a rollout that takes down more than a third of the replicas at once halves capacity mid-surge.",
        resource_types=(DEPLOYMENT, HPA, SCALED_OBJECT),
        stack_check=_deployment_rollout,
    ),
    Rule(
        id="SAFE-003",
        name="disruption-budget-a-third-at-most",
        domain="safe change",
        severity="mandatory",
        rationale="a drain that may evict more than a third of the replicas at once is the seed's rolling "
        "upgrade taking the service down.",
        resource_types=(PDB, DEPLOYMENT, HPA, SCALED_OBJECT),
        stack_check=_budget_a_third,
    ),
    Rule(
        id="SAFE-004",
        name="daemon-set-rolls-a-third-at-most",
        domain="safe change",
        severity="mandatory",
        rationale="a DaemonSet's rollout restarts its pod on every node it allows at once: a serving node's "
        "device plugin or driver going on all nodes together is the whole pool going.",
        resource_types=(_DAEMON_SET,),
        check=_daemon_set_batch,
    ),
)
