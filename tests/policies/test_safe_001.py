"""SAFE-001 on a node group whose update config gives an absolute `maxUnavailable` (a node count, not
a percentage): it may take at most a third of the group's maxSize, rounded down, and never less than
the one node EKS takes by default."""

from __future__ import annotations

from typing import Any

import pytest

from infra.offline import OfflineRun
from policies.catalog import RULES
from policies.evaluation import evaluate, failed
from policies.findings import UNKNOWN
from tests.policies.test_rules import NG, Case, _edited, _set, _stack

RULE = {"SAFE-001": RULES["SAFE-001"]}


def _absolute(name: str, count: Any, **also: Any) -> Case:
    """Node group `name` rolled `count` nodes at a time, and no percentage."""

    def edit(props: dict[str, Any]) -> None:
        props["updateConfig"] = {"maxUnavailable": count}
        for path, value in also.items():
            _set(path, value)(props)

    return Case(NG, lambda n: n == name, edit, "")


@pytest.mark.parametrize(
    ("group", "max_size", "allowed"),
    [
        ("prod-system", 6, 2),
        ("prod-gpu-full-us-west-2a-blue", 5, 1),
        ("prod-gpu-full-us-west-2a-blue", 9, 3),
        # floor(2/3) is 0, but a group is always let roll one node (EKS's own default).
        ("prod-gpu-mig-us-west-2a-blue", 2, 1),
    ],
)
def test_an_absolute_max_unavailable_may_be_a_third_of_max_size_and_not_one_more(
    runs: dict[str, OfflineRun], group: str, max_size: int, allowed: int
) -> None:
    stack = _stack(runs["prod"])
    size = {"scalingConfig.maxSize": max_size}

    at_limit, _ = _edited(stack, _absolute(group, allowed, **size))
    over, _ = _edited(stack, _absolute(group, allowed + 1, **size))

    assert not evaluate(at_limit, RULE).findings
    report = evaluate(over, RULE)
    (finding,) = report.findings
    assert finding.status == "violation"
    assert f"{group}: updateConfig.maxUnavailable is {allowed + 1}, must be <= floor(maxSize/3) = {allowed}" in (
        finding.message()
    )
    assert "max_unavailable_percentage=33" in finding.violation.fix
    assert failed(report)


def test_an_absolute_max_unavailable_on_a_group_of_unknown_size_is_not_evaluated_never_a_pass(
    runs: dict[str, OfflineRun],
) -> None:
    edited, _ = _edited(_stack(runs["prod"]), _absolute("prod-system", 1, **{"scalingConfig.maxSize": UNKNOWN}))

    report = evaluate(edited, RULE)

    (finding,) = report.findings
    assert finding.status == "not-evaluated"
    assert finding.violation.path == "scalingConfig.maxSize"
    assert failed(report, strict_unknowns=True)
