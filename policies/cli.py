"""`peakguard policy check|bench|rules`: the policy pack on the program's offline run, for PR CI, its
timing, and the rules' metadata as data."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from infra.config import ENVIRONMENTS

__all__ = ["register"]

_EXIT = (
    "Exit status: 0 no mandatory violation, 1 a mandatory violation (or an unknown, with --strict-unknowns) "
    "or an expired waiver, 2 invalid stack config, policy config or waiver."
)


def register(commands: Any) -> None:
    parser = commands.add_parser("policy", help="the policy pack: check an environment offline, list the rules")
    actions = parser.add_subparsers(dest="policy_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="run the Pulumi program under mocks and evaluate every rule on what it registers",
        description=(
            "Runs the Pulumi program for an environment under Pulumi's mocks, from its real "
            "Pulumi.<env>.yaml (or --stack-file), and evaluates the policy pack the way "
            "`pulumi preview --policy-pack policies` does: resource rules on inputs, stack rules on "
            "outputs. Needs no cloud credentials. Waivers come from policies/waivers.py; waived "
            "findings are listed as suppressed. " + _EXIT
        ),
    )
    stacks = check.add_mutually_exclusive_group(required=True)
    stacks.add_argument(
        "--env",
        action="append",
        choices=ENVIRONMENTS,
        help="a stack to check: Pulumi.<env>.yaml; repeat it to check several in one process",
    )
    stacks.add_argument("--all", action="store_true", help="check dev, staging and prod, in one process")
    check.add_argument(
        "--format",
        choices=("text", "json", "sarif", "github", "junit"),
        default="text",
        help="text (default), json, sarif (code scanning), github (PR annotations), junit",
    )
    check.add_argument(
        "--output",
        metavar="FILE",
        help="write the report there instead of stdout; with several stacks, FILE must hold {env} "
        "(e.g. policy-{env}.sarif), one file each",
    )
    check.add_argument(
        "--strict-unknowns",
        action="store_true",
        help="fail on properties unknown at preview time, not only on violations",
    )
    check.add_argument(
        "--stack-file",
        type=Path,
        metavar="PATH",
        help="check this stack file as ENV instead of Pulumi.<env>.yaml (a proposed change; one --env only)",
    )
    check.add_argument(
        "--policy-config",
        type=Path,
        metavar="FILE",
        help="enforcement levels per policy, in the JSON format of `pulumi preview --policy-pack-config`",
    )
    check.set_defaults(handler=_check)

    bench = actions.add_parser(
        "bench",
        help="time the offline check of the three stacks: three processes against one (--all)",
        description=(
            "Runs `policy check` for dev, staging and prod as three processes (as a matrix job does) "
            "and as one (`--all`), interleaved, REPEAT times, and prints the median, min and max of "
            "each and their ratio. A check that does not pass is not timed (exit 1)."
        ),
    )
    bench.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    bench.set_defaults(handler=_bench)

    rules = actions.add_parser(
        "rules",
        help="every rule with its ID, level, domain, why and peer IDs",
        description="The pack's rule metadata as data: a Markdown table or JSON.",
    )
    rules.add_argument(
        "--format", choices=("markdown", "json"), default="markdown", help="a Markdown table (default) or JSON"
    )
    rules.set_defaults(handler=_rules)


def _check(args: argparse.Namespace) -> int:
    from policies.catalog import RULES
    from policies.enforcement import levels_from_config, load_policy_config
    from policies.waivers import WAIVERS, check_waivers

    envs = list(ENVIRONMENTS) if args.all else list(dict.fromkeys(args.env))
    problem = None
    if args.stack_file and len(envs) > 1:
        problem = "--stack-file names one stack: give one --env with it"
    elif args.output and len(envs) > 1 and "{env}" not in args.output:
        problem = (
            f"--output {args.output} is one file for {len(envs)} stacks: put {{env}} in it, e.g. policy-{{env}}.sarif"
        )
    if problem:
        print(f"peakguard policy check: {problem}", file=sys.stderr)
        return 2
    try:
        levels = levels_from_config(load_policy_config(args.policy_config), RULES) if args.policy_config else {}
        check_waivers(WAIVERS, RULES)
    except ValueError as exc:
        print(f"peakguard policy check: {exc}", file=sys.stderr)
        return 2
    # One process for every stack: the Pulumi SDK and the providers' modules load once.
    codes = [_check_one(env, args, levels) for env in envs]
    return max(codes)


def _check_one(env: str, args: argparse.Namespace, levels: Any) -> int:
    from infra.config import ConfigError
    from infra.offline import find_project_dir, run_offline
    from policies.catalog import RULES
    from policies.evaluation import Stack, evaluate, failed
    from policies.reports import Context, render, summary
    from policies.waivers import WAIVERS

    started = time.monotonic()
    try:
        run = run_offline(env, stack_file=args.stack_file)
    except ConfigError as exc:
        print(f"peakguard policy check: invalid config for {env}: {exc}", file=sys.stderr)
        return 2
    report = evaluate(Stack.from_registrations(run.resources), RULES, levels=levels, waivers=WAIVERS)
    project = find_project_dir()
    stack_file = (args.stack_file or project / f"Pulumi.{env}.yaml").resolve()
    artifact = str(stack_file.relative_to(project)) if stack_file.is_relative_to(project) else str(stack_file)
    context = Context(env, artifact, time.monotonic() - started, args.strict_unknowns)
    text = render(report, context, args.format)
    if args.output:
        Path(args.output.replace("{env}", env)).write_text(text)
        print(summary(report, context))
    else:
        sys.stdout.write(text)
    return 1 if failed(report, strict_unknowns=args.strict_unknowns) else 0


def _bench(args: argparse.Namespace) -> int:
    from infra.offline import find_project_dir
    from policies.check_bench import CheckFailedError, measure, render

    if args.repeat < 1:
        print(f"peakguard policy bench: --repeat must be >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    try:
        apart, together = measure(find_project_dir(), repeat=args.repeat)
    except CheckFailedError as exc:
        print(f"peakguard policy bench: not timed: {exc}", file=sys.stderr)
        return 1
    print(render(apart, together))
    return 0


def rules_table(rules: Any) -> str:
    """The README's rule table, generated from the rules themselves."""
    lines = ["| ID | name | level | domain | why (the failure it prevents) | peers |", "|---|---|---|---|---|---|"]
    for rule in rules.values():
        lines.append(
            f"| {rule.id} | {rule.name} | {rule.severity} | {rule.domain} | {rule.rationale} | "
            f"{', '.join(rule.peers) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def _rules(args: argparse.Namespace) -> int:
    from policies.catalog import RULES

    if args.format == "json":
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "policy": r.policy_name,
                "severity": r.severity,
                "domain": r.domain,
                "scope": r.scope,
                "rationale": r.rationale,
                "resourceTypes": list(r.resource_types),
                "peers": list(r.peers),
            }
            for r in RULES.values()
        ]
        print(json.dumps(rows, indent=2))
    else:
        sys.stdout.write(rules_table(RULES))
    return 0
