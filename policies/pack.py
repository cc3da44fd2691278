"""The Pulumi policies, built from the rules: one named policy per rule, resource rules as
resource validations on inputs and stack rules as stack validations on outputs. Waivers apply
here too, so `pulumi preview --policy-pack policies` and `peakguard policy check` agree.

What the engine hands a policy is wrapped in pulumi-policy's unknown-checking proxy; it is read
back into plain data with values unknown at preview as UNKNOWN, so a rule reports them as
not evaluated. The engine's own channel for that is `UnknownValueError`, which it prints as
"can't run policy ... during preview": raised after the violations are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy import proxy as policy_proxy

from policies.findings import UNKNOWN, Finding, Resource, Rule, Violation
from policies.waivers import Waiver

__all__ = ["build_policies", "plain"]

_SENTINELS = frozenset(
    value for name, value in vars(policy_proxy).items() if name.startswith("UNKNOWN_") and isinstance(value, str)
)


_PROXIES = tuple(getattr(policy_proxy, name) for name in ("_DictProxy", "_ListProxy"))


def _unwrapped(value: Any) -> Any:
    """The container behind pulumi-policy's proxy, which hands it out under the key `__target`."""
    return value["__target"] if isinstance(value, _PROXIES) else value


def plain(value: Any) -> Any:
    """Proxied props as plain dicts and lists, values unknown at preview as UNKNOWN."""
    value = _unwrapped(value)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, str) and value in _SENTINELS:
        return UNKNOWN
    return value


def _report(
    rule: Rule,
    pairs: Iterable[tuple[Resource, Violation]],
    report_violation: ReportViolation,
    waivers: Sequence[Waiver],
    today: date,
) -> None:
    unknown: list[str] = []
    for resource, violation in pairs:
        finding = Finding(rule, resource, violation)
        waiver = next((w for w in waivers if w.matches(rule.id, resource.name, resource.urn)), None)
        if waiver is not None and not waiver.expired(today):
            continue  # suppressed: `peakguard policy check` lists it; the engine has no such status
        if waiver is not None:
            finding = finding.with_status(violation.status, f"waiver by {waiver.owner} expired on {waiver.expires}")
        if violation.status == "not-evaluated":
            unknown.append(finding.message())
            continue
        report_violation(finding.message(), resource.urn)
    if unknown:
        # The engine prints this as "can't run policy ... during preview: <message>" (with no URN),
        # so the message carries every resource and path that could not be judged.
        error = policy_proxy.UnknownValueError(policy_proxy.UNKNOWN_STRING_VALUE, [])
        error.message = " | ".join(unknown)
        raise error


def _resource_validation(rule: Rule, waivers: Sequence[Waiver], today: Callable[[], date]) -> Any:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if rule.check is None or args.resource_type not in rule.resource_types:
            return
        resource = Resource(args.resource_type, args.name, args.urn, plain(args.props))
        _report(rule, ((resource, v) for v in rule.check(resource)), report_violation, waivers, today())

    return validate


def _stack_validation(rule: Rule, waivers: Sequence[Waiver], today: Callable[[], date]) -> Any:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        if rule.stack_check is None:
            return
        resources = [Resource(r.resource_type, r.name, r.urn, plain(r.props)) for r in args.resources]
        _report(rule, rule.stack_check(resources), report_violation, waivers, today())

    return validate


def _no_expired_waivers(waivers: Sequence[Waiver], today: Callable[[], date]) -> Any:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for waiver in waivers:
            if waiver.expired(today()):
                report_violation(
                    f"waiver for {waiver.rule} on {waiver.resource} (owner {waiver.owner}) expired on "
                    f"{waiver.expires}: fix the resource or renew the waiver in policies/waivers.py",
                    None,
                )

    return validate


def build_policies(
    rules: Mapping[str, Rule], waivers: Sequence[Waiver] = (), today: Callable[[], date] = date.today
) -> list[Policy]:
    """One policy per rule, and one that fails on an expired waiver (as `peakguard policy check` does)."""
    policies: list[Policy] = [
        StackValidationPolicy(
            name="waivers-not-expired",
            description="An expired waiver fails the check until the resource is fixed or the waiver renewed.",
            validate=_no_expired_waivers(waivers, today),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
    ]
    for rule in rules.values():
        common: dict[str, Any] = {
            "name": rule.policy_name,
            "description": f"{rule.id}: {rule.rationale}",
            "enforcement_level": EnforcementLevel.MANDATORY
            if rule.severity == "mandatory"
            else EnforcementLevel.ADVISORY,
            "severity": Severity.HIGH if rule.severity == "mandatory" else Severity.MEDIUM,
            "tags": [rule.domain, *rule.peers],
        }
        if rule.check is not None:
            policies.append(ResourceValidationPolicy(validate=_resource_validation(rule, waivers, today), **common))
        else:
            policies.append(StackValidationPolicy(validate=_stack_validation(rule, waivers, today), **common))
    return policies
