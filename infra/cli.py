"""`peakguard preview`: the Pulumi program's plan for an environment, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from infra.config import ENVIRONMENTS

__all__ = ["register"]

EXIT_CONFIG_ERROR = 2
EXIT_WRITE_ERROR = 3


def register(commands: Any) -> None:
    """Add `preview` to the `peakguard` command (entry point `peakguard.commands`)."""
    parser = commands.add_parser(
        "preview",
        help="show what `pulumi up` would create for an environment, offline",
        description=(
            "Run the Pulumi program for an environment under Pulumi's mock engine, from the stack's "
            "real Pulumi.<env>.yaml, and print the resources it would create: a table per component "
            "with key properties (AZs, instance types, EFA interfaces, scaling, encryption). "
            "Needs no Pulumi CLI, cloud account or network; creates nothing. "
            "Exit status: 0 plan printed, 2 invalid stack config (the message names the key and the fix), "
            "3 the --k8s-yaml folder cannot be written."
        ),
        epilog="For the real plan against AWS: pulumi preview -s <env> (see README).",
    )
    parser.add_argument("--env", required=True, choices=ENVIRONMENTS, help="stack to preview")
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="directory holding Pulumi.yaml and Pulumi.<env>.yaml (default: nearest from the current directory)",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table for people (default), json for scripts: every resource's inputs",
    )
    parser.add_argument(
        "--stack-file",
        type=Path,
        metavar="PATH",
        default=None,
        help="preview this stack file as ENV instead of Pulumi.<env>.yaml (a proposed change), as `policy check` does",
    )
    parser.add_argument(
        "--k8s-yaml",
        type=Path,
        metavar="DIR",
        default=None,
        help="also write the Kubernetes objects as YAML, one file per object, and each Helm release's "
        "values under DIR/helm/ (for review, kubeconform/kubernetes-validate, or helm template)",
    )
    parser.set_defaults(handler=_preview)


def _preview(args: argparse.Namespace) -> int:
    from rich.console import Console

    from infra.config import ConfigError
    from infra.offline import run_offline
    from infra.preview import render, to_json

    errors = Console(stderr=True)
    try:
        run = run_offline(args.env, project_dir=args.project_dir, stack_file=args.stack_file)
    except ConfigError as exc:
        # soft_wrap: a message is one line, so a key path is never split across two.
        errors.print(f"[red]peakguard preview: invalid config for {args.env}:[/red] {exc}", highlight=False,
                     soft_wrap=True)  # fmt: skip
        return EXIT_CONFIG_ERROR
    if args.k8s_yaml is not None:
        from infra.manifests import write_yaml

        try:
            written = write_yaml(run, args.k8s_yaml)
        except OSError as exc:
            errors.print(f"[red]peakguard preview: cannot write to {args.k8s_yaml}:[/red] {exc}", highlight=False,
                         soft_wrap=True)  # fmt: skip
            return EXIT_WRITE_ERROR
        errors.print(f"wrote {len(written)} files under {args.k8s_yaml}", highlight=False)
    if args.format == "json":
        sys.stdout.write(to_json(run) + "\n")
    else:
        # Wide enough for the GPU table; a pipe or CI log gets the same layout as a terminal.
        render(run, Console(width=max(Console().width, 180)))
    return 0


def register_facts(commands: Any) -> None:
    """Add `facts` to the `peakguard` command (entry point `peakguard.commands`)."""
    parser = commands.add_parser(
        "facts",
        help="check the instance facts the program sizes nodes by against EC2",
        description="The facts the program, the policy pack and the runbooks share (infra/facts.py).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="diff the GPU instance table with EC2's DescribeInstanceTypes in a region",
        description=(
            "Ask EC2 (DescribeInstanceTypes, read-only, needs ec2:DescribeInstanceTypes) to describe every "
            "instance type infra/facts.py lays out, and print each field where the table says otherwise: "
            "network cards, EFA interfaces, GPUs, GPU model and memory, instance-store volumes and their size. "
            "Credentials and endpoint come from the usual AWS settings (AWS_PROFILE, AWS_ENDPOINT_URL, ...). "
            "Exit status: 0 the table agrees, 1 differences (printed), 2 EC2 could not be asked."
        ),
    )
    verify.add_argument("--region", default=None, help="region to ask (default: AWS_REGION or the profile's)")
    verify.set_defaults(handler=_facts_verify)


def _facts_verify(args: argparse.Namespace) -> int:
    import boto3
    import botocore.exceptions

    from infra.facts import INSTANCE_TYPES
    from infra.instance_types_check import describe, differences

    try:
        ec2 = boto3.client("ec2", region_name=args.region)
        found = differences(describe(ec2, INSTANCE_TYPES))
    except botocore.exceptions.NoRegionError:
        print("peakguard facts verify: no region: pass --region or set AWS_REGION", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(f"peakguard facts verify: EC2 could not be asked: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    for difference in found:
        print(difference)
    region = ec2.meta.region_name
    if found:
        print(f"{len(found)} difference(s) in {region}: fix infra/facts.py, citing the source", file=sys.stderr)
        return 1
    print(f"{len(INSTANCE_TYPES)} instance types agree with DescribeInstanceTypes in {region}")
    return 0


def register_config(commands: Any) -> None:
    """Add `config` to the `peakguard` command (entry point `peakguard.commands`)."""
    parser = commands.add_parser(
        "config",
        help="the stack config's JSON Schema, for editors",
        description="The stack config (`config:` of Pulumi.<env>.yaml), as infra/config.py declares it.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    schema = actions.add_parser(
        "schema",
        help="write the JSON Schema of Pulumi.<env>.yaml",
        description=(
            "Write the JSON Schema (draft 2020-12) of a stack file: every peakguard: key with its type, bounds, "
            "allowed values, default and description, generated from the loader's own model, so an editor "
            'flags a misspelt key or a bad value as it is typed (README, "Stack config"). Rules across keys '
            "(headroom, one third, prod's rules) are the loader's: `peakguard preview --env ENV` applies them. "
            "Exit status: 0 written, 3 the file cannot be written."
        ),
    )
    schema.add_argument(
        "--output", type=Path, metavar="PATH", default=None, help="write here, atomically (default: standard output)"
    )
    schema.set_defaults(handler=_config_schema)


def _config_schema(args: argparse.Namespace) -> int:
    import json

    from infra import atomic_file
    from infra.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_file.write_text(args.output, text)
    except OSError as exc:
        print(f"peakguard config schema: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_WRITE_ERROR
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
