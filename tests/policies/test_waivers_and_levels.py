"""Waivers and enforcement levels on the deliberately bad prod stack: a waived finding is still
listed (suppressed), an expired waiver fails the check, a policy config changes what blocks."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from infra.offline import run_offline
from policies.catalog import RULES
from policies.enforcement import levels_from_config
from policies.evaluation import Report, Stack, evaluate, failed
from policies.waivers import Waiver, check_waivers
from tests.infra.conftest import PROJECT_DIR

BAD_STACK = Path(__file__).parent / "stacks" / "Pulumi.bad-prod.yaml"
TODAY = date(2026, 11, 25)


@pytest.fixture(scope="module")
def bad() -> Stack:
    return Stack.from_registrations(run_offline("prod", project_dir=PROJECT_DIR, stack_file=BAD_STACK).resources)


def _waiver(expires: date, rule: str = "AVAIL-003", resource: str = "prod-gpu-mig-us-west-2a-blue") -> Waiver:
    return Waiver(
        rule=rule, resource=resource, owner="gpu-platform@", reason="one AZ has p4de capacity (CAP-42)", expires=expires
    )


def _by_rule(report: Report) -> dict[str, str]:
    return {f.rule.id: f.status for f in report.findings}


def test_the_bad_stack_fails_with_exactly_the_expected_violations(bad: Stack) -> None:
    report = evaluate(bad, RULES, today=TODAY)
    assert _by_rule(report) == {"AVAIL-003": "violation", "SAFE-003": "violation"}
    assert failed(report)


def test_a_waived_finding_is_listed_as_suppressed_and_does_not_fail(bad: Stack) -> None:
    waivers = [_waiver(date(2026, 12, 31)), _waiver(date(2026, 12, 31), "SAFE-003", "prod-model-service-full-pdb")]
    report = evaluate(bad, RULES, waivers=waivers, today=TODAY)
    assert _by_rule(report) == {"AVAIL-003": "suppressed", "SAFE-003": "suppressed"}
    finding = next(f for f in report.findings if f.rule.id == "AVAIL-003")
    assert "waived by gpu-platform@ until 2026-12-31: one AZ has p4de capacity (CAP-42)" in finding.message()
    assert not failed(report)


def test_an_expired_waiver_fails_the_check_and_says_so(bad: Stack) -> None:
    report = evaluate(bad, RULES, waivers=[_waiver(date(2026, 11, 24))], today=TODAY)
    finding = next(f for f in report.findings if f.rule.id == "AVAIL-003")
    assert finding.status == "violation"
    assert "waiver by gpu-platform@ expired on 2026-11-24" in finding.message()
    assert report.expired_waivers
    assert failed(report)


def test_an_expired_waiver_fails_even_when_its_resource_is_fixed(runs: dict) -> None:
    report = evaluate(
        Stack.from_registrations(runs["prod"].resources), RULES, waivers=[_waiver(date(2026, 1, 1))], today=TODAY
    )
    assert not report.findings and report.expired_waivers and failed(report)


def test_a_waiver_is_per_rule_and_resource(bad: Stack) -> None:
    other_resource = _waiver(date(2026, 12, 31), resource="prod-gpu-mig-us-west-2b-blue")
    other_rule = _waiver(date(2026, 12, 31), rule="SAFE-003")
    report = evaluate(bad, RULES, waivers=[other_resource, other_rule], today=TODAY)
    assert _by_rule(report) == {"AVAIL-003": "violation", "SAFE-003": "violation"}
    assert set(report.unused_waivers) == {other_resource, other_rule}


def test_a_waiver_must_name_a_rule_and_an_owner() -> None:
    with pytest.raises(ValueError, match="no rule 'SEC-999'"):
        check_waivers([_waiver(date(2026, 12, 31), rule="SEC-999")], RULES)
    with pytest.raises(ValueError, match="owner, reason and resource"):
        check_waivers([Waiver("SEC-005", "prod-eks", " ", "because", date(2026, 12, 31))], RULES)


def test_a_policy_config_in_pulumis_format_sets_the_levels(bad: Stack) -> None:
    config = {
        "safe-003-disruption-budget-a-third-at-most": "advisory",
        "avail-003-gpu-pool-spans-two-azs-in-prod": {"enforcementLevel": "disabled"},
    }
    report = evaluate(bad, RULES, levels=levels_from_config(config, RULES), today=TODAY)
    assert [(f.rule.id, f.severity) for f in report.findings] == [("SAFE-003", "advisory")]
    assert "AVAIL-003" not in report.rules
    assert not failed(report)

    everything_advisory = levels_from_config(
        {"all": "advisory", "avail-003-gpu-pool-spans-two-azs-in-prod": "mandatory"}, RULES
    )
    assert failed(evaluate(bad, RULES, levels=everything_advisory, today=TODAY))


def test_a_policy_config_naming_no_policy_is_refused_with_the_names() -> None:
    with pytest.raises(ValueError, match=r"names no policy of the pack: sec-005; policies: avail-001"):
        levels_from_config({"sec-005": "advisory"}, RULES)
    with pytest.raises(ValueError, match="'loud' is not one of"):
        levels_from_config({"all": "loud"}, RULES)
