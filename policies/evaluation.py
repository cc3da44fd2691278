"""Evaluating the pack on a stack the way the CLI's analyzer would: resource rules on each
resource's inputs, stack rules on every resource's outputs, camelCase property names; then the
enforcement levels in effect and the waivers, and the exit status CI keys on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from infra.offline import Registration
from policies.enforcement import Level
from policies.findings import Finding, Resource, Rule, Violation
from policies.waivers import Waiver

__all__ = ["Report", "Stack", "blocks", "checked", "evaluate", "failed"]


@dataclass(frozen=True)
class Stack:
    """What the analyzer hands a pack: inputs per resource, and every resource's outputs."""

    inputs: tuple[Resource, ...]
    outputs: tuple[Resource, ...]

    @classmethod
    def from_registrations(cls, registrations: Iterable[Registration]) -> Stack:
        """From an offline run. Component resources are not analyzed; outputs carry `id`, as a
        bridged provider's state does."""
        custom = [r for r in registrations if r.custom]
        return cls(
            inputs=tuple(Resource(r.type, r.name, r.urn, r.inputs) for r in custom),
            outputs=tuple(Resource(r.type, r.name, r.urn, {**r.outputs, "id": r.id}) for r in custom),
        )


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    rules: Mapping[str, Rule]
    """The rules evaluated (disabled ones left out)."""
    resources: int
    expired_waivers: tuple[Waiver, ...] = ()
    unused_waivers: tuple[Waiver, ...] = field(default=())
    """Waivers in force that matched nothing here (another stack's, or stale)."""


def checked(rule: Rule, resources: Sequence[Resource], anchor: Resource) -> list[Finding]:
    """`rule` on `resources` (one resource's inputs, or the stack's outputs). A rule that cannot read
    what it was given (a malformed or half-known value it did not expect) is `not-evaluated` on
    `anchor`: never a pass, and never a crash of the whole check."""
    try:
        if rule.check is not None:
            pairs = [(resource, violation) for resource in resources for violation in rule.check(resource)]
        else:
            assert rule.stack_check is not None
            pairs = rule.stack_check(resources)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        fix = f"report it with the resource's properties: {type(exc).__name__}: {exc}"
        pairs = [(anchor, Violation("(the rule's inputs)", None, "readable", fix, status="not-evaluated"))]
    return [Finding(rule, resource, violation) for resource, violation in pairs]


def _raw(stack: Stack, rules: Mapping[str, Rule]) -> list[Finding]:
    findings: list[Finding] = []
    for rule in rules.values():
        if rule.check is not None:
            for resource in stack.inputs:
                if resource.type in rule.resource_types:
                    findings += checked(rule, [resource], resource)
        elif stack.outputs:
            findings += checked(rule, stack.outputs, stack.outputs[0])
    # Stable across runs and formats, whatever order the program registered resources in.
    return sorted(findings, key=lambda f: (f.rule.id, f.resource.name, f.violation.path))


def evaluate(
    stack: Stack,
    rules: Mapping[str, Rule],
    *,
    levels: Mapping[str, Level] | None = None,
    waivers: Iterable[Waiver] = (),
    today: date | None = None,
) -> Report:
    """Every finding of `rules` on `stack`, at the enforcement `levels` give, with `waivers` applied."""
    levels = dict(levels or {})
    active_rules = {rule_id: rule for rule_id, rule in rules.items() if levels.get(rule_id) != "disabled"}
    today = today or date.today()
    waivers = tuple(waivers)
    used: set[Waiver] = set()
    findings = []
    for finding in _raw(stack, active_rules):
        advisory = levels.get(finding.rule.id, finding.rule.severity) == "advisory"
        finding = Finding(
            finding.rule, finding.resource, finding.violation, level="advisory" if advisory else "mandatory"
        )
        for waiver in waivers:
            if waiver.matches(finding.rule.id, finding.resource.name, finding.resource.urn):
                used.add(waiver)
                if waiver.expired(today):
                    finding = finding.with_status(
                        finding.status, f"waiver by {waiver.owner} expired on {waiver.expires}"
                    )
                else:
                    finding = finding.with_status(
                        "suppressed", f"waived by {waiver.owner} until {waiver.expires}: {waiver.reason}"
                    )
                break
        findings.append(finding)
    return Report(
        findings=tuple(findings),
        rules=active_rules,
        resources=len(stack.inputs),
        expired_waivers=tuple(w for w in waivers if w.expired(today)),
        unused_waivers=tuple(w for w in waivers if w not in used and not w.expired(today)),
    )


def blocks(finding: Finding, *, strict_unknowns: bool = False) -> bool:
    """A mandatory finding that is violated (or, with `strict_unknowns`, could not be evaluated)."""
    if finding.severity != "mandatory":
        return False
    return finding.status == "violation" or (strict_unknowns and finding.status == "not-evaluated")


def failed(report: Report, *, strict_unknowns: bool = False) -> bool:
    """True when a finding blocks or a waiver has expired."""
    return bool(report.expired_waivers) or any(blocks(f, strict_unknowns=strict_unknowns) for f in report.findings)
