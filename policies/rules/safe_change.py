"""Safe change: no rollout or drain takes more than a third of the capacity at once."""

from __future__ import annotations

from policies.findings import UNKNOWN, Resource, Rule, Violation

__all__ = ["RULES"]

_THIRD = 33


def _node_group_batch(resource: Resource) -> list[Violation]:
    percent = resource.get("updateConfig.maxUnavailablePercentage")
    absolute = resource.get("updateConfig.maxUnavailable")
    if percent is UNKNOWN and absolute is UNKNOWN:
        return [Violation("updateConfig.maxUnavailablePercentage", None, f"<= {_THIRD}",
                          f"set update_config=NodeGroupUpdateConfigArgs(max_unavailable_percentage={_THIRD}); "
                          "EKS's default is one node, but say it")]  # fmt: skip
    if percent is not UNKNOWN and float(percent) > _THIRD:
        fix = f"lower it to {_THIRD} (stack config: gpuPools.<pool>.maxUnavailablePercentage)"
        return [Violation("updateConfig.maxUnavailablePercentage", percent, f"<= {_THIRD}", fix)]
    size = resource.get("scalingConfig.maxSize")
    if absolute is not UNKNOWN and size is not UNKNOWN and int(absolute) > max(1, int(size) // 3):
        return [Violation("updateConfig.maxUnavailable", absolute, f"<= floor(maxSize/3) = {max(1, int(size) // 3)}",
                          "use max_unavailable_percentage=33 instead of an absolute count")]  # fmt: skip
    return []


def _deployment_rollout(resource: Resource) -> list[Violation]:
    found = []
    strategy = resource.get("spec.strategy.rollingUpdate.maxUnavailable")
    if strategy is UNKNOWN:
        found.append(Violation("spec.strategy.rollingUpdate.maxUnavailable", None, "set, <= 33%",
                               'set rolling_update=RollingUpdateDeploymentArgs(max_unavailable="25%")'))  # fmt: skip
    elif isinstance(strategy, str) and strategy.endswith("%") and int(strategy[:-1]) > _THIRD:
        found.append(Violation("spec.strategy.rollingUpdate.maxUnavailable", strategy, "<= 33%", 'use "25%"'))
    return found


RULES = (
    Rule(
        id="SAFE-001", name="node-group-rolls-a-third-at-most", domain="safe change", severity="mandatory",
        rationale="a rolling upgrade of more than a third of the nodes takes the service down at peak.",
        resource_types=("aws:eks/nodeGroup:NodeGroup",), check=_node_group_batch,
    ),
    Rule(
        id="SAFE-002", name="deployment-rolls-a-third-at-most", domain="safe change", severity="mandatory",
        rationale="a rollout that takes down more than a third of the replicas at once halves capacity mid-surge.",
        resource_types=("kubernetes:apps/v1:Deployment",), check=_deployment_rollout,
    ),
)  # fmt: skip
