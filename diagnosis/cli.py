"""`peakguard diagnose`: where the time goes and the likely bottleneck, live or from a drill's recording."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from diagnosis.causes import CAUSES, Diagnosis, diagnose
from diagnosis.readings import Window
from diagnosis.series import QueryRange, Recording, RecordingError, record

__all__ = ["register"]

PROMETHEUS_ENV = "PEAKGUARD_PROMETHEUS_URL"
EXIT = {"healthy": 0, "cause": 1, "inconclusive": 3}
"""Exit status by verdict (2 is a usage or input error, as argparse's)."""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "diagnose",
        help="where the time goes and the likely bottleneck, with the runbook for it (live or from a drill)",
        description=(
            "Read the model service's metrics (responses by outcome, latency per stage and per layer, batch sizes, "
            "queue depth, the breaker, GPU memory where present, and kube-state-metrics' view of pods and nodes) "
            "over a range, judge the recent part against the first, and name the likely bottleneck and the "
            "runbook for it: " + ", ".join(f"{name} ({c.runbook or 'no runbook'})" for name, c in CAUSES.items())
            + ". It says 'healthy' only when the SLO holds and no check found a cause, and 'inconclusive' "
            "(naming what is missing) rather than guessing. Exit status: 0 healthy, 1 a cause named, "
            "3 inconclusive, 2 bad input."
        ),
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--env", choices=("dev", "staging", "prod"),
                        help="diagnose this environment now: its namespace and SLO from the targets document in SSM, "
                             f"its metrics from Prometheus (--prometheus or ${PROMETHEUS_ENV})")  # fmt: skip
    source.add_argument("--from-drill", type=Path, metavar="REPORT.json",
                        help="diagnose a recording offline: a drill's report (`peakguard drill ... --json`) or a "
                             "recording `--save-recording` wrote")  # fmt: skip
    parser.add_argument("--prometheus", default=os.environ.get(PROMETHEUS_ENV),
                        help=f"Prometheus's URL (default ${PROMETHEUS_ENV}); from a laptop: `kubectl -n monitoring "
                             "port-forward svc/kube-prometheus-stack-prometheus 9090` and "
                             "http://127.0.0.1:9090")  # fmt: skip
    parser.add_argument("--region", help="AWS region of the env (default: the AWS config's)")
    parser.add_argument("--minutes", type=float, default=15.0, help="with --env: how far back to read")
    parser.add_argument("--recent-minutes", type=float, default=5.0,
                        help="with --env: the part judged (the rest's first part is the baseline)")  # fmt: skip
    parser.add_argument("--window", metavar="START:END",
                        help="with --from-drill: the seconds from the recording's start to judge (default: its "
                             "last third; the baseline is its first third, or what comes before START if "
                             "shorter)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the diagnosis as JSON here")
    parser.add_argument("--save-recording", type=Path, help="with --env: keep what was read, for --from-drill later")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    recent: Window | None
    baseline: Window | None
    try:
        if args.env:
            recording, recent, baseline = _live(args)
        else:
            recording = Recording.read(args.from_drill)
            recent, baseline = _windows(recording, args.window)
    except (RecordingError, ValueError) as exc:
        print(f"peakguard diagnose: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    diagnosis = diagnose(recording, recent=recent, baseline=baseline)
    print(render(diagnosis, seconds=time.perf_counter() - started))
    if args.json:
        partial = args.json.with_name(f".{args.json.name}.partial")
        partial.write_text(json.dumps(diagnosis.to_dict(), indent=2, default=str))
        partial.replace(args.json)
    return EXIT[diagnosis.verdict]


def _windows(recording: Recording, text: str | None) -> tuple[Window | None, Window | None]:
    if text is None:
        return None, None
    try:
        start_text, end_text = text.split(":")
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise ValueError(
            f"--window {text!r}: expected START:END in seconds from the recording's start, e.g. 40:70"
        ) from None
    span = recording.end - recording.start
    if not 0 <= start < end <= span + recording.step:
        raise ValueError(f"--window {text!r}: must lie within the recording's 0:{span:.0f} seconds, START before END")
    recent = Window(recording.start + start, recording.start + end)
    base_end = min(recording.start + span / 3, recent.start)
    if base_end - recording.start < 2 * recording.step:
        raise ValueError(
            f"--window {text!r}: leaves no baseline before it; start it later than {2 * recording.step:g} s"
        )
    return recent, Window(recording.start, base_end)


def _live(args: argparse.Namespace) -> tuple[Recording, Window, Window]:
    import boto3

    from runbooks.errors import RunbookError
    from runbooks.ports.cloud import AwsCloud

    if not args.prometheus:
        raise ValueError(
            f"no Prometheus URL: pass --prometheus or set ${PROMETHEUS_ENV} (from a laptop: kubectl -n monitoring "
            "port-forward svc/kube-prometheus-stack-prometheus 9090, then --prometheus http://127.0.0.1:9090)"
        )
    if not 0 < args.recent_minutes < args.minutes:
        raise ValueError(
            f"--recent-minutes ({args.recent_minutes:g}) must be positive and under --minutes ({args.minutes:g})"
        )
    session = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    try:
        targets = AwsCloud(session, env=args.env).targets()
    except RunbookError as exc:
        raise ValueError(str(exc)) from None
    if targets.model_service is None:
        raise ValueError(f"the targets document of {args.env} declares no model service: nothing to diagnose")
    end = time.time()
    start = end - args.minutes * 60
    step = max(1.0, args.minutes * 60 / 300)  # 300 points a series: well under Prometheus's 11000
    errors: list[str] = []
    recording = record(
        prometheus_range(args.prometheus), namespace=targets.model_service.namespace, start=start, end=end, step=step,
        slo_seconds=targets.model_service.slo_p99_ms / 1000, notes={"env": args.env, "prometheus": args.prometheus},
        on_error=lambda name, exc: errors.append(f"{name}: {exc}"),
    )  # fmt: skip
    for line in errors:
        print(f"peakguard diagnose: not read: {line}", file=sys.stderr)
    if not recording.series:
        raise ValueError(f"Prometheus at {args.prometheus} answered no query: {errors[0] if errors else ''}")
    if args.save_recording:
        recording.write(args.save_recording)
    recent = Window(end - args.recent_minutes * 60, end)
    baseline = Window(start, min(start + args.recent_minutes * 60, recent.start))
    return recording, recent, baseline


def prometheus_range(url: str, *, timeout: float = 10.0) -> QueryRange:
    """`query_range` against Prometheus's HTTP API at `url`."""
    import httpx

    def query_range(expr: str, start: float, end: float, step: float) -> Any:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            response = httpx.get(f"{url.rstrip('/')}/api/v1/query_range", params=params, timeout=timeout)
        except httpx.HTTPError as exc:
            raise RecordingError(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise RecordingError(f"{url}: HTTP {response.status_code}, not JSON: {response.text[:200]}") from None
        if body.get("status") != "success":
            raise RecordingError(f"{url}: {body.get('errorType', '')} {body.get('error', response.text[:200])}")
        return body["data"]["result"]

    return query_range


def render(diagnosis: Diagnosis, *, seconds: float | None = None) -> str:
    """The diagnosis for a terminal."""
    fleet, time_ = diagnosis.fleet, diagnosis.time
    window = diagnosis.recent
    lines = [
        f"window: {window.seconds:.0f} s judged against the {diagnosis.baseline.seconds:.0f} s before; "
        f"{fleet['pods_serving']} pod(s) serving, {fleet['requests_per_second']} requests/s, "
        f"{fleet['answered_per_second']} answered/s, p99 "
        + ("n/a" if fleet["p99_ms"] is None else f"{fleet['p99_ms']:.0f} ms")
        + ("" if fleet["slo_ms"] is None else f" (SLO {fleet['slo_ms']:.0f} ms)")
        + ("" if fleet["shed_share"] is None else f", {fleet['shed_share']:.1%} shed"),
    ]
    if time_["stages_ms"]:
        shares = time_["stage_shares"]
        lines.append("a request's time: " + ", ".join(
            f"{stage} {ms:.1f} ms ({shares.get(stage, 0):.0%})" for stage, ms in
            sorted(time_["stages_ms"].items(), key=lambda item: -item[1])))  # fmt: skip
    if time_["slowest_layers"]:
        lines.append("slowest layers a batch: " + ", ".join(
            f"{layer['pod']} {layer['model']}/{layer['layer']} {layer['ms_per_batch']:.1f} ms"
            for layer in time_["slowest_layers"][:3]))  # fmt: skip
    if diagnosis.symptoms:
        lines.append("clients see: " + "; ".join(diagnosis.symptoms))
    lines.append(f"verdict: {diagnosis.verdict}: {diagnosis.reason}")
    if diagnosis.cause is not None:
        cause = diagnosis.cause
        lines.append(f"runbook: {cause.runbook or 'none'}: {cause.action}")
        if cause.runbook:
            env = diagnosis.fleet.get("env")
            lines.append(f"  peakguard runbook plan {cause.runbook}" + (f" --env {env}" if env else " --env ENV"))
    for finding in diagnosis.findings[1:]:
        lines.append(f"also: {finding.cause} ({finding.score:.2f}): {finding.summary}")
    for check, metric in diagnosis.unchecked.items():
        lines.append(f"not checked: {check} (needs {metric})")
    if seconds is not None:
        lines.append(f"diagnosed in {seconds:.2f} s")
    return "\n".join(lines)
