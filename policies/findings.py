"""One result model for every output: a rule's metadata, and what it found on which resource.

Every finding is a fix: the property path, the current value, the required value, why (the
failure it prevents) and the smallest change. A property unknown at preview time is
`not-evaluated`, never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["UNKNOWN", "Finding", "Resource", "Rule", "Severity", "Status", "Violation"]

Severity = Literal["mandatory", "advisory"]
Status = Literal["violation", "not-evaluated", "suppressed"]


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown at preview>"


UNKNOWN: Any = _Unknown()
"""What a property reads as when the engine does not know it yet (computed, preview)."""


@dataclass(frozen=True)
class Resource:
    """A resource as a policy sees it: type token, logical name, URN, inputs in wire format."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]

    def get(self, path: str) -> Any:
        """A property by dotted path (`updateConfig.maxUnavailablePercentage`); UNKNOWN when absent."""
        value: Any = self.props
        for part in path.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return UNKNOWN
        return value


@dataclass(frozen=True)
class Violation:
    path: str
    current: Any
    required: str
    fix: str
    status: Status = "violation"


@dataclass(frozen=True)
class Rule:
    id: str
    """Stable: SAFE-001, CAP-002, ... (what waivers and SARIF refer to)."""
    name: str
    domain: str
    severity: Severity
    rationale: str
    """Why: the failure of the seed it prevents."""
    resource_types: tuple[str, ...]
    check: Callable[[Resource], list[Violation]]
    peers: tuple[str, ...] = ()
    """Matching Checkov/Trivy rule IDs, where one exists."""


@dataclass(frozen=True)
class Finding:
    rule: Rule
    resource: Resource
    violation: Violation

    @property
    def status(self) -> Status:
        return self.violation.status

    def message(self) -> str:
        v = self.violation
        if v.status == "not-evaluated":
            head = f"{self.rule.id} {self.rule.name}: not evaluated on {self.resource.type} {self.resource.name}"
            return f"{head}: {v.path} is unknown at preview time; it must be {v.required}"
        return (
            f"{self.rule.id} {self.rule.name}: {self.resource.type} {self.resource.name}: {v.path} is {v.current!r}, "
            f"must be {v.required}. Why: {self.rule.rationale} Fix: {v.fix}"
        )

    def to_dict(self) -> dict[str, Any]:
        v = self.violation
        return {
            "rule": self.rule.id, "name": self.rule.name, "severity": self.rule.severity, "domain": self.rule.domain,
            "status": v.status, "resource": self.resource.urn, "type": self.resource.type, "path": v.path,
            "current": None if v.current is UNKNOWN else v.current, "required": v.required, "fix": v.fix,
            "why": self.rule.rationale, "message": self.message(),
        }  # fmt: skip
