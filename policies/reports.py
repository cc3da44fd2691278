"""One report, five renderings: text for people, JSON for tools, SARIF for code scanning, GitHub
workflow commands for PR annotations, JUnit for test dashboards. All of them come from the same
findings, with stable rule IDs and resource URNs (Pulumi's own `--json` carries no violations:
pulumi/pulumi#18851)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from policies.evaluation import Report, blocks, failed
from policies.findings import Finding, Rule

__all__ = ["FORMATS", "Context", "render", "summary"]

_SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


@dataclass(frozen=True)
class Context:
    env: str
    artifact: str
    """The stack file the findings are about, relative to the repository root (annotations anchor there)."""
    seconds: float
    strict_unknowns: bool = False


def _waiver_lines(report: Report) -> list[str]:
    lines = [
        f"expired waiver: {w.rule} on {w.resource} (owner {w.owner}, expired {w.expires}): fix the resource "
        "or renew the waiver in policies/waivers.py"
        for w in report.expired_waivers
    ]
    lines += [
        f"unused waiver: {w.rule} on {w.resource} (owner {w.owner}) matched nothing in this stack"
        for w in report.unused_waivers
    ]
    return lines


_STATUS_ORDER = {"violation": 0, "not-evaluated": 1, "suppressed": 2}


def _text(report: Report, context: Context) -> str:
    lines = []
    order = _STATUS_ORDER
    for finding in sorted(report.findings, key=lambda f: (f.severity != "mandatory", order[f.status], f.rule.id)):
        lines.append(f"[{finding.severity} {finding.status}] {finding.message()}")
    lines += _waiver_lines(report)
    lines.append(summary(report, context))
    return "\n".join(lines) + "\n"


def summary(report: Report, context: Context) -> str:
    """The one-line verdict every rendering ends with (and the CLI prints when writing a file)."""
    counts = {status: sum(f.status == status for f in report.findings) for status in _STATUS_ORDER}
    verdict = "FAILED" if failed(report, strict_unknowns=context.strict_unknowns) else "passed"
    return (
        f"{context.env}: {verdict}: {len(report.rules)} rules on {report.resources} resources, "
        f"{len(report.findings)} findings ({counts['violation']} violations, {counts['not-evaluated']} not evaluated, "
        f"{counts['suppressed']} suppressed), {context.seconds:.1f} s"
    )


def _json(report: Report, context: Context) -> str:
    document = {
        "env": context.env,
        "stackFile": context.artifact,
        "rules": len(report.rules),
        "resources": report.resources,
        "seconds": round(context.seconds, 2),
        "failed": failed(report, strict_unknowns=context.strict_unknowns),
        "findings": [f.to_dict() for f in report.findings],
        "expiredWaivers": [_waiver(w) for w in report.expired_waivers],
        "unusedWaivers": [_waiver(w) for w in report.unused_waivers],
    }
    return json.dumps(document, indent=2, default=str) + "\n"


def _waiver(waiver: Any) -> dict[str, str]:
    return {
        "rule": waiver.rule,
        "resource": waiver.resource,
        "owner": waiver.owner,
        "reason": waiver.reason,
        "expires": waiver.expires.isoformat(),
    }


def _sarif_level(finding: Finding) -> str:
    if finding.status == "not-evaluated":
        return "note"
    return "error" if finding.severity == "mandatory" else "warning"


def _sarif_rule(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.policy_name,
        "shortDescription": {"text": f"{rule.id} {rule.name}"},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": f"Why: {rule.rationale} Peers: {', '.join(rule.peers) or 'none'}."},
        "defaultConfiguration": {"level": "error" if rule.severity == "mandatory" else "warning"},
        "properties": {
            "domain": rule.domain,
            "scope": rule.scope,
            "peers": list(rule.peers),
            "tags": [rule.domain, "peakguard-policy"],
        },
    }


def _sarif(report: Report, context: Context) -> str:
    rules = list(report.rules.values())
    index = {rule.id: i for i, rule in enumerate(rules)}
    results = []
    for finding in report.findings:
        result: dict[str, Any] = {
            "ruleId": finding.rule.id,
            "ruleIndex": index[finding.rule.id],
            "level": _sarif_level(finding),
            "message": {"text": finding.message()},
            "locations": [
                {
                    "physicalLocation": {"artifactLocation": {"uri": context.artifact}, "region": {"startLine": 1}},
                    "logicalLocations": [
                        {"fullyQualifiedName": finding.resource.urn, "name": finding.resource.name, "kind": "resource"}
                    ],
                }
            ],
            "partialFingerprints": {
                "peakguardFinding/v1": f"{finding.rule.id}:{finding.resource.urn}:{finding.violation.path}"
            },
            "properties": {"status": finding.status, "path": finding.violation.path, "fix": finding.violation.fix},
        }
        if finding.status == "suppressed":
            # "external": the waiver lives in policies/waivers.py, not in the stack file the result points at.
            result["suppressions"] = [{"kind": "external", "status": "accepted", "justification": finding.note}]
        results.append(result)
    document = {
        "$schema": _SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "peakguard-policy", "rules": [_sarif_rule(r) for r in rules]}},
                "automationDetails": {"id": f"peakguard-policy/{context.env}/"},
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2, default=str) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(report: Report, context: Context) -> str:
    """Workflow commands: GitHub turns each into an annotation on the stack file in the PR."""
    lines = []
    for finding in report.findings:
        if finding.status == "suppressed":
            continue
        command = (
            "notice"
            if finding.status == "not-evaluated"
            else ("error" if finding.severity == "mandatory" else "warning")
        )
        title = _escape_property(f"{finding.rule.id} {finding.rule.name} ({context.env})")
        lines.append(
            f"::{command} file={_escape_property(context.artifact)},line=1,title={title}::"
            f"{_escape_data(finding.message())}"
        )
    for line in _waiver_lines(report):
        command = "error" if line.startswith("expired") else "notice"
        lines.append(f"::{command} file=policies/waivers.py,title=waiver::{_escape_data(line)}")
    lines.append(summary(report, context))
    return "\n".join(lines) + "\n"


def _junit(report: Report, context: Context) -> str:
    """A test case per rule: it fails when a mandatory finding is a violation (or an expired waiver's),
    is skipped when all it has are unknowns, and lists advisory and suppressed findings as output."""
    suite = ElementTree.Element("testsuite", name=f"peakguard-policy.{context.env}", time=f"{context.seconds:.2f}")
    failures = skipped = 0
    for rule in report.rules.values():
        mine = [f for f in report.findings if f.rule.id == rule.id]
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"policy.{rule.domain.replace(' ', '_')}",
            name=f"{rule.id} {rule.name}",
            time="0",
        )
        blocking = [f for f in mine if blocks(f, strict_unknowns=context.strict_unknowns)]
        unknown = [f for f in mine if f.status == "not-evaluated"]
        if blocking:
            failures += 1
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=f"{len(blocking)} on {', '.join(sorted({f.resource.name for f in blocking}))}",
                type=rule.id,
            )
            failure.text = "\n".join(f.message() for f in blocking)
        elif unknown and len(unknown) == len(mine):
            skipped += 1
            ElementTree.SubElement(case, "skipped", message="not evaluated: " + "; ".join(f.message() for f in unknown))
        rest = [f for f in mine if f not in blocking]
        if rest:
            ElementTree.SubElement(case, "system-out").text = "\n".join(
                f"[{f.severity} {f.status}] {f.message()}" for f in rest
            )
    if report.expired_waivers:
        failures += 1
        case = ElementTree.SubElement(
            suite, "testcase", classname="policy.waivers", name="no expired waivers", time="0"
        )
        ElementTree.SubElement(case, "failure", message="expired waivers", type="waiver").text = "\n".join(
            _waiver_lines(report)
        )
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    root = ElementTree.Element("testsuites")
    root.append(suite)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


FORMATS: dict[str, Callable[[Report, Context], str]] = {
    "text": _text,
    "json": _json,
    "sarif": _sarif,
    "github": _github,
    "junit": _junit,
}


def render(report: Report, context: Context, format_: str) -> str:
    return FORMATS[format_](report, context)
