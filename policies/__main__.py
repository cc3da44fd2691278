"""The policy pack, as `pulumi preview --policy-pack policies` loads it: built from the rules, nothing else."""

from collections.abc import Callable

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.catalog import RULES
from policies.findings import Finding, Resource, Rule


def _validator(rule: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in rule.resource_types:
            return
        resource = Resource(args.resource_type, args.name, args.urn, args.props)
        for violation in rule.check(resource):
            report_violation(Finding(rule, resource, violation).message(), args.urn)

    return validate


PolicyPack(
    name="peakguard",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        ResourceValidationPolicy(
            name=f"{rule.id.lower()}-{rule.name}",
            description=rule.rationale,
            validate=_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY if rule.severity == "mandatory" else EnforcementLevel.ADVISORY,
        )
        for rule in RULES.values()
    ],
)
