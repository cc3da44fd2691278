"""Safe change: no rollout or drain takes more than a third of the capacity at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import of_type, stack_env
from policies.workloads import DEPLOYMENT, HPA, PDB, SCALED_OBJECT, guarding_budgets, scaling_of

__all__ = ["RULES"]

_THIRD = 33


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
        fix = f"lower it to {_THIRD} (stack config: gpuPools.<pool>.maxUnavailablePercentage)"
        return [Violation("updateConfig.maxUnavailablePercentage", percent, f"<= {_THIRD}", fix)]
    size = resource.get("scalingConfig.maxSize")
    if absolute is not None and known(size) and int(absolute) > max(1, int(size) // 3):
        return [
            Violation(
                "updateConfig.maxUnavailable",
                absolute,
                f"<= floor(maxSize/3) = {max(1, int(size) // 3)}",
                "use max_unavailable_percentage=33 instead of an absolute count",
            )
        ]
    return []


def _deployment_rollout(resource: Resource) -> list[Violation]:
    found = []
    strategy = resource.get("spec.strategy.rollingUpdate.maxUnavailable")
    if strategy is UNKNOWN:
        found.append(Violation("spec.strategy.rollingUpdate.maxUnavailable", None, "known", "", status="not-evaluated"))
    elif strategy is None:
        found.append(
            Violation(
                "spec.strategy.rollingUpdate.maxUnavailable",
                None,
                "set, <= 33%",
                'set rolling_update=RollingUpdateDeploymentArgs(max_unavailable="25%")',
            )
        )
    elif isinstance(strategy, str) and strategy.endswith("%") and int(strategy[:-1]) > _THIRD:
        found.append(Violation("spec.strategy.rollingUpdate.maxUnavailable", strategy, "<= 33%", 'use "25%"'))
    return found


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
    if isinstance(unavailable, str):
        if _percent(unavailable) > _THIRD:
            return Violation("spec.maxUnavailable", unavailable, f"<= {_THIRD}%", 'use maxUnavailable "33%" or less')
        return None
    if unavailable is None:
        if isinstance(available, str):
            ok = _percent(available) >= 100 - _THIRD
            return None if ok else Violation("spec.minAvailable", available, f">= {100 - _THIRD}%", 'use "67%"')
        unavailable = int(fewest) - int(available)
    fewest, unavailable = int(fewest), int(unavailable)
    if scaling.scales_from_zero and unavailable <= 1:
        return None  # a standby variant: one pod at a time, so a drain can always proceed
    if fewest >= 3 and unavailable <= math.floor(fewest / 3):
        return None
    if fewest < 3 and stack_env(resources) != "prod" and unavailable <= 1:
        return None  # dev runs one replica on purpose; a drain there may take it
    where = (
        "modelService.minReplicas" if scaling.autoscaler is not None and scaling.autoscaler.type == HPA else "replicas"
    )
    fix = (
        f"raise {where} to >= 3, so one pod can be evicted without losing more than a third"
        if fewest < 3
        else f"set maxUnavailable to {max(1, fewest // 3)} (a third of {fewest}, rounded down)"
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
        resource_types=("kubernetes:apps/v1:Deployment",),
        check=_deployment_rollout,
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
)
