"""Chaos: a fault experiment is only safe when something stops it. Every FIS experiment template
stops on CloudWatch alarms declared in the same stack, uses only the FIS actions the program knows
(each on its own target key and resource type, from the FIS actions reference), and never takes out
more than a third of the model pods at once."""

from __future__ import annotations

import re
from collections.abc import Sequence

from infra.facts import FIS_ACTIONS, MAX_UNAVAILABLE_PERCENTAGE
from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import mapping, of_type, sequence

__all__ = ["RULES"]

_TEMPLATE = "aws:fis/experimentTemplate:ExperimentTemplate"
_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
_PERCENT = re.compile(r"^PERCENT\((\d+)\)$")


def _stops_on_alarms(template: Resource, resources: Sequence[Resource]) -> list[Violation]:
    conditions = template.get("stopConditions")
    if conditions is UNKNOWN:
        return [Violation("stopConditions", None, "known", "", status="not-evaluated")]
    alarms = [mapping(c) for c in sequence(conditions) if mapping(c).get("source") == "aws:cloudwatch:alarm"]
    if not alarms or any(mapping(c).get("source") == "none" for c in sequence(conditions)):
        return [Violation("stopConditions", conditions, "at least one aws:cloudwatch:alarm, and no `none`",
                          "stop the experiment on the service's alarms (infra/chaos.py declares two)")]  # fmt: skip
    declared = {a.get("arn") for a in of_type(resources, _ALARM)}
    values = [a.get("value") for a in alarms]
    if any(not known(v) for v in values) or UNKNOWN in declared:
        return [Violation("stopConditions[].value", None, "known", "", status="not-evaluated")]
    foreign = [v for v in values if v not in declared]
    if foreign:
        return [Violation("stopConditions[].value", foreign, "alarms this stack declares",
                          "an alarm from elsewhere can be deleted or changed without this stack knowing; "
                          "declare it here")]  # fmt: skip
    return []


def _stop_conditions(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    return [(t, v) for t in of_type(resources, _TEMPLATE) for v in _stops_on_alarms(t, resources)]


def _known_actions(template: Resource) -> list[Violation]:
    actions, targets = template.get("actions"), template.get("targets")
    if UNKNOWN in (actions, targets):
        return [Violation("actions", None, "known", "", status="not-evaluated")]
    types = {mapping(t).get("name"): mapping(t).get("resourceType") for t in sequence(targets)}
    found: list[Violation] = []
    for action in map(mapping, sequence(actions)):
        action_id = action.get("actionId")
        if action_id not in FIS_ACTIONS:
            found.append(Violation("actions[].actionId", action_id, f"one of {', '.join(sorted(FIS_ACTIONS))}",
                                   "use an action of the FIS actions reference and add it to infra/facts.FIS_ACTIONS "
                                   "with its target key and resource type"))  # fmt: skip
            continue
        key, resource_type = FIS_ACTIONS[str(action_id)]
        target = mapping(action.get("target"))
        if target.get("key") != key or types.get(target.get("value")) != resource_type:
            found.append(Violation(f"actions[{action.get('name')}].target", dict(target),
                                   f"key {key} naming a target of type {resource_type}",
                                   "FIS refuses the template (action-sequence.html#action-targets)"))  # fmt: skip
    return found


def _a_third_of_pods(template: Resource) -> list[Violation]:
    targets = template.get("targets")
    if targets is UNKNOWN:
        return [Violation("targets", None, "known", "", status="not-evaluated")]
    found = []
    for target in map(mapping, sequence(targets)):
        if target.get("resourceType") != "aws:eks:pod":
            continue
        mode = target.get("selectionMode")
        match = _PERCENT.match(mode) if isinstance(mode, str) else None
        if match is None or int(match[1]) > MAX_UNAVAILABLE_PERCENTAGE:
            fix = ("a fault that takes more than a third of the pods at once is the outage, not a drill: lower "
                   "peakguard:kubernetes.modelService.chaos.podDeletePercent")  # fmt: skip
            found.append(Violation(f"targets[{target.get('name')}].selectionMode", mode,
                                   f"PERCENT(n), n <= {MAX_UNAVAILABLE_PERCENTAGE}", fix))  # fmt: skip
    return found


RULES = (
    Rule(
        id="CHAOS-001",
        name="fault-experiment-stops-on-alarms",
        domain="chaos",
        severity="mandatory",
        rationale="a fault experiment with nothing to stop it runs on while the service breaks: the drill "
        "becomes the incident.",
        resource_types=(_TEMPLATE, _ALARM),
        stack_check=_stop_conditions,
    ),
    Rule(
        id="CHAOS-002",
        name="fault-experiment-uses-known-actions",
        domain="chaos",
        severity="mandatory",
        rationale="an action id or target key FIS does not have fails the template only at `pulumi up`, "
        "or runs a fault nobody reviewed.",
        resource_types=(_TEMPLATE,),
        check=_known_actions,
    ),
    Rule(
        id="CHAOS-003",
        name="pod-fault-a-third-at-most",
        domain="chaos",
        severity="mandatory",
        rationale="deleting more than a third of the model pods at once is the seed's capacity loss on purpose.",
        resource_types=(_TEMPLATE,),
        check=_a_third_of_pods,
    ),
)
