"""One result model for every output: a rule's metadata, and what it found on which resource.

Every finding is a fix: the property path, the current value, the required value, why (the
failure it prevents) and the smallest change. A property unknown at preview time is
`not-evaluated`, never a pass. A finding a waiver covers is `suppressed`, still listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "UNKNOWN",
    "Finding",
    "Resource",
    "ResourceCheck",
    "Rule",
    "Severity",
    "StackCheck",
    "Status",
    "Violation",
    "known",
]

Severity = Literal["mandatory", "advisory"]
Status = Literal["violation", "not-evaluated", "suppressed"]


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown at preview>"


UNKNOWN: Any = _Unknown()
"""What a property reads as when the engine does not know it yet (computed, preview). A property
the program did not set reads as None: absent is known, and is judged."""


def known(value: Any) -> bool:
    """Set, and known at preview."""
    return value is not None and value is not UNKNOWN


@dataclass(frozen=True)
class Resource:
    """A resource as a policy sees it: type token, logical name, URN and properties in wire format
    (inputs for resource rules, outputs for stack rules, as the engine's analyzer gives them)."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]

    def get(self, path: str) -> Any:
        """A property by dotted path (`updateConfig.maxUnavailablePercentage`): None when absent,
        UNKNOWN when it, or a value on the way to it, is unknown at preview."""
        value: Any = self.props
        for part in path.split("."):
            if value is UNKNOWN:
                return UNKNOWN
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        return value


@dataclass(frozen=True)
class Violation:
    path: str
    current: Any
    required: str
    fix: str
    status: Status = "violation"


ResourceCheck = Callable[[Resource], list[Violation]]
"""A resource rule: one resource's inputs in, what is wrong with it out."""
StackCheck = Callable[[Sequence[Resource]], list[tuple[Resource, Violation]]]
"""A stack rule: every resource's outputs in (it relates resources), what is wrong on which out."""


@dataclass(frozen=True)
class Rule:
    id: str
    """Stable: SAFE-001, CAP-002, ... (what waivers, SARIF and JUnit refer to)."""
    name: str
    domain: str
    severity: Severity
    """The default enforcement; a policy config (Pulumi's `--policy-pack-config` format) may change it."""
    rationale: str
    """Why: the failure of the seed it prevents."""
    resource_types: tuple[str, ...]
    """What it reads: the types a resource rule runs on, the types a stack rule relates."""
    check: ResourceCheck | None = None
    stack_check: StackCheck | None = None
    peers: tuple[str, ...] = ()
    """Matching Checkov/Trivy rule IDs, where one exists."""

    def __post_init__(self) -> None:
        if (self.check is None) == (self.stack_check is None):
            raise ValueError(f"rule {self.id}: give exactly one of check (per resource) or stack_check")

    @property
    def policy_name(self) -> str:
        """The name Pulumi knows the rule by (policy config keys, the CLI's violation list)."""
        return f"{self.id.lower()}-{self.name}"

    @property
    def scope(self) -> Literal["resource", "stack"]:
        return "resource" if self.check is not None else "stack"


@dataclass(frozen=True)
class Finding:
    rule: Rule
    resource: Resource
    violation: Violation
    level: Severity | None = None
    """The enforcement in effect (the rule's default unless a policy config changed it)."""
    note: str = ""
    """Why it is suppressed (the waiver), or that a waiver for it has expired."""

    @property
    def status(self) -> Status:
        return self.violation.status

    @property
    def severity(self) -> Severity:
        return self.level or self.rule.severity

    def with_status(self, status: Status, note: str) -> Finding:
        return replace(self, violation=replace(self.violation, status=status), note=note)

    def message(self) -> str:
        v = self.violation
        if v.status == "not-evaluated":
            head = f"{self.rule.id} {self.rule.name}: not evaluated on {self.resource.type} {self.resource.name}"
            fix = v.fix or (
                "nothing yet: it is known once `pulumi up` has created what it depends on; the check after that "
                "run judges it (CI can fail on unknowns with --strict-unknowns)"
            )
            return (
                f"{head}: {v.path} is unknown at preview time (or unreadable); it must be {v.required}. "
                f"Why: {self.rule.rationale} Fix: {fix}"
            )
        text = (
            f"{self.rule.id} {self.rule.name}: {self.resource.type} {self.resource.name}: {v.path} is {v.current!r}, "
            f"must be {v.required}. Why: {self.rule.rationale} Fix: {v.fix}"
        )
        return f"{text} ({self.note})" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        v = self.violation
        return {
            "rule": self.rule.id,
            "name": self.rule.name,
            "severity": self.severity,
            "domain": self.rule.domain,
            "status": v.status,
            "resource": self.resource.urn,
            "resourceName": self.resource.name,
            "type": self.resource.type,
            "path": v.path,
            "current": None if v.current is UNKNOWN else v.current,
            "required": v.required,
            "fix": v.fix,
            "why": self.rule.rationale,
            "note": self.note,
            "message": self.message(),
        }
