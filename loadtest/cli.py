"""`peakguard loadtest`: the open-loop load from N workers, as an Indexed Job on the cluster."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    root = commands.add_parser(
        "loadtest",
        help="open-loop load from N workers as a Kubernetes Indexed Job; one worker's capacity",
        description="Distributed load: `run` offers a rate from N pods of an Indexed Job and merges their "
        "histograms; `capacity` measures how fast one worker sends on schedule, and so N for a rate.",
    )
    actions = root.add_subparsers(dest="loadtest_action", metavar="ACTION", required=True)
    _register_capacity(actions)
    parser = actions.add_parser(
        "run",
        help="offer --rps from --workers pods of an Indexed Job; one merged report",
        description=(
            "Offer --rps to --url from --workers pods of an Indexed Job (each a share of the rate, its own seed, "
            "all started together once every one is running), for --duration seconds, and merge their HDR "
            "histograms of latency (from each request's scheduled send) and lateness into one report. Refused "
            "before anything is created if the run could exceed --max-requests. The Job and its ConfigMap are "
            "deleted at the end, on failure and on Ctrl-C. Needs the load node pool, namespace and service "
            "account the stack declares (peakguard:kubernetes.loadTest). Exit status: 0 a valid report, 1 a "
            "report whose figures are invalid (it says why), 2 refused or failed before a report."
        ),
    )
    parser.add_argument("--url", required=True, help="the endpoint, as the workers reach it (e.g. the Service URL)")
    parser.add_argument("--rps", type=float, required=True, help="requests per second, all workers together")
    parser.add_argument("--duration", type=float, required=True, help="seconds of load")
    parser.add_argument("--workers", type=int, required=True, help="pods of the Job; each sends rps/workers")
    parser.add_argument("--image", required=True, help="the load worker image (peakguard[model,load])")
    parser.add_argument("--namespace", default="peakguard-load", help="where the Job runs")
    parser.add_argument("--seed", type=int, default=0, help="worker i uses seed + i")
    parser.add_argument("--max-requests", type=int, default=20_000_000, help="hard cap on the run's requests")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kube-url", help="a Kubernetes API at a plain URL (the lab's); the workers get it too")
    where.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the latency-by-percentile plot here (PNG)")
    parser.set_defaults(handler=_run)


def _register_capacity(actions: Any) -> None:
    parser = actions.add_parser(
        "capacity",
        help="one worker's ceiling on this machine, and the workers 100k rps needs",
        description=(
            "Run one worker's generator pinned to one core against a bare endpoint pinned to another, at each "
            "--rates for --seconds, and report the highest rate it sent on schedule (lateness p99 within the "
            "generator's 5 ms bar, nothing lost) and the workers 100k rps needs at that rate. Refused on a busy "
            "machine. Exit status: 0 a ceiling found, 1 no rate sustained, 2 refused."
        ),
    )
    parser.add_argument("--rates", default="1000,1500,2000,2500,3000,3500",
                        help="requests per second to try, comma-separated")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds at each rate (the first quarter, "
                        "at most 1 s, is warm-up)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.set_defaults(handler=_capacity)


def _capacity(args: argparse.Namespace) -> int:
    from loadtest.capacity import measure

    try:
        rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    except ValueError:
        print(f"peakguard loadtest capacity: --rates {args.rates!r}: give numbers, e.g. 1000,2000", file=sys.stderr)
        return 2
    try:
        report = measure(rates, args.seconds)
    except RuntimeError as exc:
        print(f"peakguard loadtest capacity: {exc}", file=sys.stderr)
        return 2
    for row in report["rates"]:
        print(f"{row['rps']:>8g} rps: sent {row['sent']}, answered {row['answered']}, lost {row['lost']}, lateness "
              f"p99 {row['latenessMs']['p99']} ms, latency p99 {row['latencyMs']['p99']} ms: "
              f"{'on schedule' if row['sustained'] else 'behind'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if report["ceilingRps"] is None:
        print("no rate was sustained: try lower --rates")
        return 1
    at_least = "at least " if report["ceilingRps"] == max(rates) else ""
    print(f"one worker (one core) sustains {at_least}{report['ceilingRps']:g} rps: {report['workersFor100k']} "
          f"workers for 100k rps{' or fewer (try higher --rates)' if at_least else ''}")  # fmt: skip
    return 0


def _apis(args: argparse.Namespace) -> tuple[Any, Any]:
    from kubernetes import client, config  # type: ignore[import-untyped, unused-ignore]

    configuration = client.Configuration()
    if args.kube_url:
        configuration.host = args.kube_url
    else:
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    return client.CoreV1Api(api), client.BatchV1Api(api)


def _run(args: argparse.Namespace) -> int:
    from loadtest.coordinator import LoadPlan, LoadRefusedError, run_distributed
    from loadtest.job import WorkerPods
    from loadtest.report import plot

    plan = LoadPlan(url=args.url, rps=args.rps, duration=args.duration, workers=args.workers,
                    pods=WorkerPods(image=args.image, namespace=args.namespace), seed=args.seed,
                    timeout=args.timeout, max_requests=args.max_requests)  # fmt: skip
    # SIGTERM as Ctrl-C: the coordinator's cleanup runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, unused-ignore]
    from kubernetes.config import ConfigException  # type: ignore[import-untyped, unused-ignore]

    try:
        plan.check()
        core, batch = _apis(args)
        report = run_distributed(core, batch, plan, kube_url=args.kube_url)
    except LoadRefusedError as exc:
        print(f"peakguard loadtest: {exc}", file=sys.stderr)
        return 2
    except ConfigException as exc:
        print(f"peakguard loadtest: no cluster to run on: {exc}; pass --kubeconfig, or for EKS: aws eks "
              "update-kubeconfig --name <cluster>", file=sys.stderr)  # fmt: skip
        return 2
    except ApiException as exc:
        hints = {404: f"is there a namespace {args.namespace}? A stack declares it with "
                      "peakguard:kubernetes.loadTest (then `pulumi up`)",
                 403: f"your identity may not create Jobs and ConfigMaps in {args.namespace}"}  # fmt: skip
        hint = hints.get(exc.status, "see the message above")
        print(f"peakguard loadtest: the Kubernetes API answered {exc.status} {exc.reason}; {hint}", file=sys.stderr)
        return 2
    except (TimeoutError, RuntimeError) as exc:
        print(f"peakguard loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peakguard loadtest: interrupted", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot)
    latency, totals = report["latencyMs"], report["totals"]
    print(f"{plan.workers} workers: {totals['sent']:,} sent, {totals['ok']:,} answered, {totals['shed']:,} shed, "
          f"{totals['errors5xx']:,} 5xx, {totals['transportErrors']:,} transport errors; latency p50 "
          f"{latency['p50']} ms p99 {latency['p99']} ms max {latency['max']} ms; lateness p99 "
          f"{report['latenessMs']['p99']} ms")  # fmt: skip
    for reason in report["invalidBecause"]:
        print(f"  invalid: {reason}")
    return 1 if report["invalidBecause"] else 0
