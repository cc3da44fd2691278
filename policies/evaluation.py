"""Evaluating the pack on a run of the program, as the CLI's analyzer would (resource policies on
inputs, camelCase property names), and the exit status CI keys on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policies.findings import Finding, Resource, Rule

__all__ = ["evaluate", "failed"]


def evaluate(resources: Iterable[Resource], rules: Mapping[str, Rule]) -> list[Finding]:
    findings: list[Finding] = []
    for resource in resources:
        for rule in rules.values():
            if resource.type in rule.resource_types:
                findings.extend(Finding(rule, resource, violation) for violation in rule.check(resource))
    return findings


def failed(findings: Iterable[Finding], *, strict_unknowns: bool = False) -> bool:
    """True when a mandatory rule is violated (or, with `strict_unknowns`, could not be evaluated)."""
    for finding in findings:
        if finding.rule.severity != "mandatory":
            continue
        if finding.status == "violation" or (strict_unknowns and finding.status == "not-evaluated"):
            return True
    return False
