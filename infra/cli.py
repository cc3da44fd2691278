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
