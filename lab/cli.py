"""`peakguard lab up`: the lab in the foreground, for trying runbooks by hand against it."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "lab",
        help="stand up the local lab (AWS in moto, the Kubernetes API, model-service pods) and keep it up",
        description=(
            "Stand up, on this machine, an environment the runbooks cannot tell from a small real one, "
            "seeded from the Pulumi program's objects for --env: AWS in moto's server, the Kubernetes API "
            "with played controllers, one real `peakguard serve` process per pod, and a least-outstanding-"
            "requests load balancer in front of the Ready pods. It prints the commands that reach it and "
            "stays up until Ctrl-C or SIGTERM, then stops every process and port it started."
        ),
    )
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="stand the lab up and keep it up until Ctrl-C")
    up.add_argument("--env", default="dev", choices=("dev", "staging", "prod"), help="stack config to seed from")
    up.add_argument(
        "--artifacts",
        type=Path,
        required=True,
        help="model versions the pods serve (what `peakguard train --out` wrote)",
    )
    up.add_argument("--replicas", type=int, default=1, help="Ready full-model replicas to start with (default 1)")
    up.add_argument("--max-pods", type=int, default=4, help="pods beyond this stay Pending (each is a process)")
    for name, default, what in (
        ("aws-port", 0, "moto"),
        ("kube-port", 0, "the Kubernetes API"),
        ("proxy-port", 0, "the load balancer"),
    ):
        up.add_argument(f"--{name}", type=int, default=default, help=f"port of {what} on 127.0.0.1 (0: a free one)")
    up.set_defaults(handler=_up)

    drill = commands.add_parser(
        "drill",
        help="the incident drill: the seed's 8x surge on the real service in the lab, mitigated by the runbooks",
        description=(
            "Run the seed's incident on this machine: the real model service in the lab (see `peakguard lab`), "
            "calibrated (its unloaded p99 and the rate it sustains), steady traffic of real banking77 queries, then "
            "a surge to 8x the sustainable rate. The cluster's own alert rules are evaluated by a real Prometheus "
            "(their windows scaled by k) and, when one pages, `peakguard runbook run emergency-stop --yes` runs as "
            "the on-call would run it; once the surge is over and calm, `rebuild` takes the fleet back to normal, "
            "then `rolling-upgrade` moves the full pool's nodes to the next AMI release under steady load. "
            "The report says what clients saw, when the alert fired and how long each stage of the mitigation took."
        ),
    )
    kinds = drill.add_subparsers(dest="drill_kind", metavar="DRILL", required=True)
    surge = kinds.add_parser("surge", help="steady load, an 8x surge held, then back", description=drill.description)
    surge.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the data sets (banking77/ inside); default $PEAKGUARD_DATA, else ../shared/data",
    )
    surge.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="trained models to serve (peakguard train --out); default: quick models, made once",
    )
    surge.add_argument("--cache", type=Path, default=Path(".peakguard-cache"), help="where quick models are kept")
    surge.add_argument(
        "--out",
        type=Path,
        default=Path("drill-out"),
        help="journals, logs, Prometheus data; each run replaces the last run's lab/ and prometheus/ there, "
        "journals stay (default drill-out)",
    )
    surge.add_argument("--json", type=Path, default=None, help="write every number of the report here")
    surge.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    surge.add_argument("--no-autopilot", action="store_true", help="the same surge with nobody acting")
    surge.add_argument(
        "--no-upgrade",
        action="store_true",
        help="after rebuild, skip rolling-upgrade (the full pool's nodes to the next AMI release, under steady load)",
    )
    surge.add_argument(
        "--fault",
        default=None,
        choices=("replica", "node", "zone", "slow-layer", "cold", "bad-step"),
        help=(
            "break something (lab/drill_faults.py): replica (kill a serving process at the surge's peak), node "
            "(a node NotReady at the peak), zone (every node of a zone NotReady at the peak), slow-layer (one "
            "layer of one replica sleeps an SLO before every batch, from the peak to the surge's end), cold (no warm "
            "spares: replicas added during the surge load their models cold), bad-step (rebuild's first ConfigMap "
            "patch refused: it rolls back, timed, then runs again)"
        ),
    )
    surge.add_argument(
        "--predictive",
        action="store_true",
        help="the variant for predictive-scale (lab/drill_predictive.py): CloudWatch holds six days in which this "
        "surge came daily at this time; the surge runs twice on fresh labs, reactive (paged, emergency-stop) and "
        "after predictive-scale's CronJob cycle, and the report says when capacity came in each",
    )
    surge.add_argument(
        "--steady",
        type=float,
        default=None,
        help="seconds of steady traffic first (default 15; with --predictive, 10 minutes of the history's time, as "
        "far ahead as the 15-minute forecast sees: 600k s, 30 at k = 0.05)",
    )
    surge.add_argument("--surge", type=float, default=55.0, help="seconds the surge is held (default 55)")
    surge.add_argument(
        "--after",
        type=float,
        default=30.0,
        help="seconds of steady traffic after it at least; longer while a runbook still needs traffic (default 30)",
    )
    surge.add_argument("--factor", type=float, default=8.0, help="the surge as a multiple of the sustainable rate")
    surge.add_argument(
        "--max-surge-rps",
        type=float,
        default=300.0,
        help="a ceiling on the surge: the generator and the lab's load balancer share one process, and at 456 "
        "rps they stalled here; the report says when it capped the surge (default 300)",
    )
    surge.add_argument(
        "--max-pods",
        type=int,
        default=None,
        help="pods the lab may run, each a serving process on these cores: the full model's HPA maximum is one "
        "less (rebuild's canary needs the last); at least 3 (default 3: with 5, four full-model processes on 2 "
        "cores timed out thousands of requests while the runbook scaled out; 4 with --predictive, whose night "
        "already asks for two replicas with the 30%% headroom, so that only the forecast asks for the third)",
    )
    surge.add_argument(
        "--k",
        type=float,
        default=0.05,
        help="time scale of the alert rules: every for:, range and offset times k (default 0.05)",
    )
    surge.set_defaults(handler=_drill)

    recorded = kinds.add_parser(
        "record",
        help="recordings for `peakguard diagnose`: steady traffic, one known cause injected at a random moment",
        description=(
            "For each cause and seed, a fresh lab under steady traffic of real banking77 queries, one known cause "
            "injected at a moment the seed draws (with the load, the replicas, the pod struck and how hard: "
            "lab/diagnosis_recordings.py), and what the cluster's Prometheus would hold, written as "
            "<cause>-<seed>.json.gz for `peakguard diagnose --from-drill`. One calibration first, as the drill's; "
            "each run takes 1.5-2 minutes on 2 cores."
        ),
    )
    recorded.add_argument("--cause", action="append", choices=("none", "overload", "cold-replica", "slow-layer",
                                                                "node-not-ready"), required=True,
                          help="what to inject (repeatable; none: nothing, the no-fault run)")  # fmt: skip
    recorded.add_argument("--seeds", default="0", help="seeds, e.g. 0-4 or 0,3,7: one recording each (default 0)")
    recorded.add_argument("--folder", type=Path, default=Path("recordings"), help="where the recordings go")
    recorded.add_argument("--data", type=Path, default=None,
                          help="the data sets (banking77/ inside); default $PEAKGUARD_DATA, else "
                               "../shared/data")  # fmt: skip
    recorded.add_argument("--artifacts", type=Path, default=None, help="trained models (default: quick models)")
    recorded.add_argument("--cache", type=Path, default=Path(".peakguard-cache"), help="where quick models are kept")
    recorded.add_argument("--out", type=Path, default=Path("drill-out"), help="the labs' scratch (replaced each run)")
    recorded.set_defaults(handler=_record)


def _up(args: argparse.Namespace) -> int:
    from lab.lab import Lab, LabError, LabSettings
    from runbooks.engine.run import sigterm_as_interrupt

    # moto's server logs every request it serves (werkzeug); that is noise on the user's terminal.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    if not args.artifacts.is_dir():
        print(
            f"peakguard lab: --artifacts {args.artifacts} is not a folder of model versions "
            "(make one with `peakguard train --out DIR`)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="peakguard-lab-") as workdir, sigterm_as_interrupt():
        settings = LabSettings(
            artifacts=args.artifacts,
            workdir=Path(workdir),
            env=args.env,
            replicas=args.replicas,
            max_pods=args.max_pods,
            aws_port=args.aws_port,
            kube_port=args.kube_port,
            proxy_port=args.proxy_port,
        )
        try:
            with Lab(settings) as lab:
                exports = " ".join(f"{key}={value}" for key, value in sorted(lab.aws_env.items()))
                print(
                    f"lab up for {args.env}: {len(lab.ready_backends())} Ready replica(s)\n"
                    f"  AWS (moto):       {lab.aws_env['AWS_ENDPOINT_URL']}\n"
                    f"  Kubernetes API:   {lab.kube_url}\n"
                    f"  load balancer:    {lab.proxy_url}/v1/intent\n"
                    f"in another shell:\n"
                    f"  export {exports}\n"
                    f"  peakguard runbook plan emergency-stop --env {args.env} --kube-url {lab.kube_url}\n"
                    f"Ctrl-C takes it down.",
                    flush=True,
                )
                threading.Event().wait()
        except KeyboardInterrupt:
            print("lab down: every process and port it started is stopped", file=sys.stderr)
            return 0
        except LabError as exc:
            print(f"peakguard lab: {exc}", file=sys.stderr)
            return 2
    return 0


def _drill(args: argparse.Namespace) -> int:
    import os

    from lab.drill import DrillError, DrillSettings, run
    from lab.drill_predictive import default_steady
    from lab.drill_report import plot, render, report, write_json
    from lab.lab import LabError

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    data = args.data or Path(os.environ.get("PEAKGUARD_DATA") or Path.cwd().parent / "shared" / "data")
    try:
        settings = DrillSettings(
            data=data,
            out=args.out,
            cache=args.cache,
            artifacts=args.artifacts,
            steady_seconds=args.steady
            if args.steady is not None
            else (default_steady(args.k) if args.predictive else 15.0),
            surge_seconds=args.surge,
            after_seconds=args.after,
            surge_factor=args.factor,
            max_surge_rps=args.max_surge_rps,
            time_scale=args.k,
            max_pods=args.max_pods if args.max_pods is not None else (4 if args.predictive else 3),
            autopilot=not args.no_autopilot,
            upgrade=not args.no_upgrade,
            fault=args.fault,
        )
        if args.predictive:
            return _predictive(settings, args)
        timeline = run(settings, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("drill stopped: every process and port it started is stopped", file=sys.stderr)
        return 130
    except (DrillError, LabError) as exc:
        print(f"peakguard drill: {exc}", file=sys.stderr)
        return 2
    numbers = report(timeline, settings)
    print("\n" + render(numbers))
    if args.json:
        write_json(numbers, args.json)
        print(f"report: {args.json}")
    if args.plot:
        plot(timeline, numbers, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            seeds.extend(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"--seeds {text!r}: expected numbers and ranges, e.g. 0-4 or 0,3,7") from None
    return seeds


def _record(args: argparse.Namespace) -> int:
    import os

    from lab.diagnosis_recordings import record_many
    from lab.drill import DrillError, DrillSettings
    from lab.lab import LabError
    from lab.prometheus import PrometheusError

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    data = args.data or Path(os.environ.get("PEAKGUARD_DATA") or Path.cwd().parent / "shared" / "data")
    try:
        seeds = _seeds(args.seeds)
        settings = DrillSettings(data=data, out=args.out, cache=args.cache, artifacts=args.artifacts, autopilot=False)
        written = record_many(settings, list(dict.fromkeys(args.cause)), seeds, args.folder,
                              log=lambda line: print(line, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        print("recording stopped: every process and port it started is stopped", file=sys.stderr)
        return 130
    except (DrillError, LabError, PrometheusError, ValueError) as exc:
        print(f"peakguard drill record: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} recording(s) in {args.folder}")
    return 0


def _predictive(settings: Any, args: argparse.Namespace) -> int:
    """Both arms, then the comparison (every arm's full report in the JSON); exit 1 if not a valid one."""
    from lab import drill_comparison, drill_predictive
    from lab.drill_report import report, write_json

    result = drill_predictive.run(settings, log=lambda line: print(line, flush=True))
    numbers = drill_comparison.compare(result, settings)
    numbers["reports"] = {arm: report(timeline, settings) for arm, timeline in result.arms.items()}
    print("\n" + drill_comparison.render(numbers))
    if args.json:
        write_json(numbers, args.json)
        print(f"report: {args.json}")
    if args.plot:
        drill_comparison.plot(result, numbers, args.plot)
        print(f"plot: {args.plot}")
    return 0 if numbers["valid"] else 1
