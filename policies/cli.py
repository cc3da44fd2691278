"""`peakguard policy check --env <env>`: the policy pack on the program's offline run, for PR CI."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser("policy", help="the policy pack: check an environment offline")
    actions = parser.add_subparsers(dest="policy_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="run the Pulumi program under mocks and evaluate every rule on what it registers",
        description=(
            "Runs the Pulumi program for an environment under Pulumi's mocks, from its real "
            "Pulumi.<env>.yaml, and evaluates the policy pack on every registered resource the way "
            "`pulumi preview --policy-pack policies` does. Needs no cloud credentials. Exit status: "
            "0 no mandatory violation, 1 a mandatory violation (or an unknown, with --strict-unknowns), "
            "2 invalid stack config."
        ),
    )
    check.add_argument("--env", required=True, choices=("dev", "staging", "prod"))
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument("--strict-unknowns", action="store_true",
                       help="fail on properties unknown at preview time, not only on violations")  # fmt: skip
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from infra.config import ConfigError
    from infra.offline import run_offline
    from policies.catalog import RULES
    from policies.evaluation import evaluate, failed
    from policies.findings import Resource

    started = time.monotonic()
    try:
        run = run_offline(args.env)
    except ConfigError as exc:
        print(f"peakguard policy check: invalid config for {args.env}: {exc}", file=sys.stderr)
        return 2
    resources = [Resource(r.type, r.name, r.urn, r.inputs) for r in run.resources if r.custom]
    findings = evaluate(resources, RULES)
    seconds = time.monotonic() - started
    if args.format == "json":
        report = {"env": args.env, "rules": len(RULES), "resources": len(resources), "seconds": round(seconds, 2),
                  "findings": [f.to_dict() for f in findings]}  # fmt: skip
        print(json.dumps(report, indent=2, default=str))
    else:
        for severity in ("mandatory", "advisory"):
            for finding in (f for f in findings if f.rule.severity == severity):
                print(f"[{severity} {finding.status}] {finding.message()}")
        print(f"{args.env}: {len(RULES)} rules on {len(resources)} resources, {len(findings)} findings, "
              f"{seconds:.1f} s")  # fmt: skip
    return 1 if failed(findings, strict_unknowns=args.strict_unknowns) else 0
