"""`peakguard capacity plan`: replicas, GPUs and nodes for a request rate within a p99 SLO."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infra.config import ENVIRONMENTS

__all__ = ["register"]

EXIT_INVALID = 2
EXIT_WRITE_ERROR = 3


def register(commands: Any) -> None:
    """Add `capacity` to the `peakguard` command (entry point `peakguard.commands`)."""
    parser = commands.add_parser(
        "capacity",
        help="plan replicas, GPUs and nodes for a request rate and a latency SLO",
        description="Capacity plans from a queueing model and the stack's own config (capacity/).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan",
        help="replicas, GPUs, nodes per AZ, the loss of one AZ and the cost for a request rate",
        description=(
            "Size the model service of an environment for RPS requests/s with p99 within P99_MS: the fewest "
            "replicas an M/M/c queue (one per replica, at the replica's sustainable rate) says meet it, the 30% "
            "headroom of infra/facts.py on top, then GPUs and nodes per AZ of the stack's serving pool, what "
            "losing one AZ leaves as a share of the need, the seed's formula beside it, and the cost per hour "
            "from the stack config's pricing table when it has one. Reads Pulumi.<env>.yaml; changes nothing. "
            "Exit status: 0 plan printed (warnings say where the stack's limits fall short), 2 invalid input "
            "(config, an SLO no size meets, a bench that did not run on the pool's GPU), 3 the --json file cannot be "
            "written."
        ),
    )
    plan.add_argument("--env", required=True, choices=ENVIRONMENTS, help="stack whose config and pool to plan for")
    plan.add_argument("--rps", required=True, type=float, help="the peak request rate to serve, requests/s")
    plan.add_argument("--p99-ms", required=True, type=float, help="the latency SLO: p99 in milliseconds")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("--replica-rps", type=float, help="requests/s one replica sustains on the pool's GPU")
    source.add_argument(
        "--bench",
        type=Path,
        metavar="FILE",
        help="a `peakguard bench model --json` report run on the pool's GPU: its sustainable rate is used "
        "(a CPU bench is refused: it says nothing about an H100)",
    )
    plan.add_argument(
        "--project-dir", type=Path, default=None, help="directory with Pulumi.yaml (default: nearest from here)"
    )
    plan.add_argument(
        "--stack-file", type=Path, metavar="PATH", default=None, help="plan with this stack file as ENV (a proposal)"
    )
    plan.add_argument("--json", type=Path, metavar="FILE", default=None, help="also write the plan as JSON here")
    plan.set_defaults(handler=_plan)


def _replica_rate(args: argparse.Namespace, gpu_model: str) -> tuple[float, str]:
    """The replica's rate and where it came from; ValueError says why a bench cannot give it."""
    if args.replica_rps is not None:
        if args.replica_rps <= 0:
            raise ValueError(f"--replica-rps must be positive, got {args.replica_rps:g}")
        return args.replica_rps, "--replica-rps"
    try:
        report = json.loads(args.bench.read_text())
        device = str(report.get("machine", {}).get("device", "cpu"))
        figure = report["figures"]["sustainable_rps"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{args.bench}: not a `peakguard bench model --json` report ({exc})") from None
    family = gpu_model.split("-")[0]  # H100-80GB: the bench's device name says "NVIDIA H100 80GB HBM3"
    if family.lower() not in device.lower():
        raise ValueError(
            f"{args.bench} ran on {device}, not on the pool's {gpu_model}: a replica's rate on one device says "
            "nothing about another; bench on the pool's GPU or pass --replica-rps"
        )
    if not figure.get("valid") or not figure.get("median"):
        raise ValueError(f"{args.bench}: its sustainable rate is invalid ({figure.get('invalid_because')})")
    return float(figure["median"]), f"{args.bench}, {device}, median of {len(figure.get('values', []))}"


def _plan(args: argparse.Namespace) -> int:
    from capacity.plan import plan, render
    from infra import atomic_file
    from infra.config import ConfigError, StackConfig
    from infra.stack_files import find_project_dir, load_stack_file

    try:
        project = args.project_dir or find_project_dir()
        config = StackConfig.from_mapping(load_stack_file(project, args.env, args.stack_file), stack=args.env)
        if args.rps <= 0 or args.p99_ms <= 0:
            raise ValueError(f"--rps and --p99-ms must be positive, got {args.rps:g} and {args.p99_ms:g}")
        pool = config.pool(config.kubernetes.model_service.pool)
        rate, source = _replica_rate(args, pool.instance.gpu_model)
        result = plan(config, rps=args.rps, p99_ms=args.p99_ms, replica_rps=rate, replica_rps_source=source)
    except (ConfigError, ValueError) as exc:
        print(f"peakguard capacity plan: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(render(result))
    if args.json is not None:
        try:
            atomic_file.write_text(args.json, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            print(f"peakguard capacity plan: cannot write {args.json}: {exc}", file=sys.stderr)
            return EXIT_WRITE_ERROR
    return 0
