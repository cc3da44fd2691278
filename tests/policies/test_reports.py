"""The five renderings of one report: each parsed back the way its consumer reads it (JSON, SARIF
as code scanning reads it, GitHub workflow commands, JUnit through junitparser)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import junitparser
import pytest

from infra.offline import run_offline
from policies.catalog import RULES
from policies.evaluation import Report, Stack, evaluate
from policies.findings import UNKNOWN
from policies.reports import Context, render
from policies.waivers import Waiver
from tests.infra.conftest import PROJECT_DIR
from tests.policies.test_rules import DEPLOYMENT, HPA, Case, _edited, _set

BAD_STACK = Path(__file__).parent / "stacks" / "Pulumi.bad-prod.yaml"
CONTEXT = Context(env="prod", artifact="Pulumi.prod.yaml", seconds=1.5)


@pytest.fixture(scope="module")
def report() -> Report:
    """Every status at once: two violations (one with a % in it), one suppressed, one not evaluated."""
    stack = Stack.from_registrations(run_offline("prod", project_dir=PROJECT_DIR, stack_file=BAD_STACK).resources)
    stack, _ = _edited(
        stack,
        Case(
            DEPLOYMENT,
            lambda n: n.endswith("model-service-full"),
            _set("spec.strategy.rollingUpdate.maxUnavailable", "50%"),
            "",
        ),
    )
    stack, _ = _edited(
        stack, Case(HPA, lambda n: True, _set("spec.behavior.scaleUp.stabilizationWindowSeconds", UNKNOWN), "")
    )
    waiver = Waiver(
        "AVAIL-003", "prod-gpu-mig-us-west-2a-blue", "gpu-platform@", "capacity in one AZ", date(2026, 12, 31)
    )
    return evaluate(stack, RULES, waivers=[waiver], today=date(2026, 11, 25))


def test_the_report_holds_every_status(report: Report) -> None:
    assert sorted((f.rule.id, f.status) for f in report.findings) == [
        ("AVAIL-003", "suppressed"),
        ("CAP-002", "not-evaluated"),
        ("SAFE-002", "violation"),
        ("SAFE-003", "violation"),
    ]


def test_text_lists_blocking_findings_first_and_ends_with_the_verdict(report: Report) -> None:
    lines = render(report, CONTEXT, "text").splitlines()
    assert lines[0].startswith("[mandatory violation] SAFE-002")
    assert lines[-2].startswith("[mandatory suppressed] AVAIL-003")
    assert lines[-1].startswith(f"prod: FAILED: {len(RULES)} rules on ")
    assert "(2 violations, 1 not evaluated, 1 suppressed)" in lines[-1]


def test_json_carries_urns_paths_and_the_verdict(report: Report) -> None:
    document = json.loads(render(report, CONTEXT, "json"))
    assert document["failed"] is True and document["stackFile"] == "Pulumi.prod.yaml"
    safe = next(f for f in document["findings"] if f["rule"] == "SAFE-002")
    assert safe["resource"].endswith("::prod-model-service-full") and safe["resource"].startswith("urn:pulumi:prod::")
    assert (safe["path"], safe["current"], safe["status"]) == (
        "spec.strategy.rollingUpdate.maxUnavailable",
        "50%",
        "violation",
    )
    unknown = next(f for f in document["findings"] if f["rule"] == "CAP-002")
    assert unknown["current"] is None


def test_sarif_has_what_code_scanning_reads(report: Report) -> None:
    document = json.loads(render(report, CONTEXT, "sarif"))
    assert document["version"] == "2.1.0"
    (run,) = document["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    assert all(r["fullDescription"]["text"] and r["defaultConfiguration"]["level"] == "error" for r in rules)
    levels = {}
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        (location,) = result["locations"]
        assert location["physicalLocation"]["artifactLocation"]["uri"] == "Pulumi.prod.yaml"
        assert location["logicalLocations"][0]["fullyQualifiedName"].startswith("urn:pulumi:prod::")
        levels[result["ruleId"]] = (result["level"], "suppressions" in result)
    assert levels == {
        "SAFE-002": ("error", False),
        "SAFE-003": ("error", False),
        "CAP-002": ("note", False),
        "AVAIL-003": ("error", True),
    }
    fingerprints = [r["partialFingerprints"]["peakguardFinding/v1"] for r in run["results"]]
    assert len(set(fingerprints)) == len(fingerprints)


def test_github_annotations_are_escaped_workflow_commands(report: Report) -> None:
    lines = render(report, CONTEXT, "github").splitlines()
    commands = [line for line in lines if line.startswith("::")]
    assert len(commands) == 3, "suppressed findings are not annotated"
    safe = next(line for line in commands if "SAFE-002" in line)
    assert safe.startswith(
        "::error file=Pulumi.prod.yaml,line=1,title=SAFE-002 deployment-rolls-a-third-at-most (prod)::"
    )
    assert "'50%25'" in safe and "'50%'" not in safe
    assert next(line for line in commands if "CAP-002" in line).startswith("::notice ")
    assert lines[-1].startswith("prod: FAILED")


def test_junit_has_a_case_per_rule_that_fails_skips_or_passes(report: Report, tmp_path: Path) -> None:
    path = tmp_path / "policy.xml"
    path.write_text(render(report, CONTEXT, "junit"))
    (suite,) = junitparser.JUnitXml.fromfile(str(path))
    cases = {case.name.split()[0]: case for case in suite}
    assert set(cases) == set(RULES)
    assert suite.tests == len(RULES) and suite.failures == 2 and suite.skipped == 1
    failing = sorted(
        rule for rule, case in cases.items() if any(isinstance(r, junitparser.Failure) for r in case.result)
    )
    assert failing == ["SAFE-002", "SAFE-003"]
    assert any(isinstance(r, junitparser.Skipped) for r in cases["CAP-002"].result)
    assert cases["AVAIL-003"].is_passed and "suppressed" in (cases["AVAIL-003"].system_out or "")


def test_an_expired_waiver_is_a_failing_junit_case_and_an_error_annotation(report: Report, tmp_path: Path) -> None:
    stale = Waiver("SEC-005", "prod-eks", "platform@", "VPN pending", date(2026, 1, 1))
    expired = Report(report.findings, report.rules, report.resources, expired_waivers=(stale,))
    assert "::error file=policies/waivers.py,title=waiver::expired waiver: SEC-005 on prod-eks" in render(
        expired, CONTEXT, "github"
    )
    path = tmp_path / "policy.xml"
    path.write_text(render(expired, CONTEXT, "junit"))
    (suite,) = junitparser.JUnitXml.fromfile(str(path))
    assert suite.failures == 3
