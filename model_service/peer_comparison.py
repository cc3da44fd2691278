"""`peakguard bench model --peer ray-serve`: peakguard's service and Ray Serve side by side.

The peer (`model_service.ray_peer`) serves the same model version, precision and queries on the
same core, the load generator on the other, and both are held to one SLO and one latency budget:
the ones peakguard's own run derived from its unloaded p99. In order:

1. the peer as Ray ships it (unbounded queue): its unloaded p99, the highest rate it sustains within
   the SLO (the same search and confirm as peakguard's), then the same 8x load peakguard took, which
   shows its capacity (answers per second when saturated) and what an unbounded queue does;
2. the peer restarted with its queue bounded for the budget (`ray_peer.queue_bound`: what it drains
   within the budget at that capacity), then the 8x load again: goodput (answers within the SLO per
   second), p99, 5xx;
3. both at one rate, the lower of the two sustainable rates, for p99 at an equal answered rate
   (peakguard with admission on, as it runs in production).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model_service.benchmark import UNLOADED_RPS, judge_goals, measure_run, sustainable_rate
from model_service.load_generator import P99_MIN_SAMPLES, invalid_because
from model_service.ray_peer import RayServeProcess, queue_bound
from model_service.service_process import ServiceProcess, running_on, split_cores

__all__ = ["compare", "compare_or_say_why", "figures", "render", "run_against"]

Log = Callable[[str], None]

EQUAL_RATE_TOLERANCE = 0.05
"""Answered rates closer than this share count as equal; further apart, the p99 ratio is invalid."""


def _p99_s(report: dict[str, Any]) -> float:
    value = report["latency_ms"]["p99"]
    return math.inf if value is None else float(value) / 1000


def compare(folder: Path, ours: dict[str, Any], *, texts: Sequence[str], seed: int, unloaded_seconds: float,
            step_seconds: float, start_rps: float, overload_seconds: float, serve_settings: dict[str, Any],
            log: Log = print) -> dict[str, Any]:  # fmt: skip
    """The peer measured against `ours`: the SLO, budget, sustainable and 8x rates of one repetition
    of `benchmark._service`'s report. peakguard's own 8x and equal-rate runs are made again here,
    right after the peer's, so each ratio compares runs taken side by side."""
    server, generator = split_cores("bench model --peer")
    slo, budget = ours["slo_p99_ms"] / 1000, ours["latency_budget_ms"] / 1000
    overload_rps = ours["overload_rps"]
    peer_base = {"artifacts": str(folder.parent), "version": folder.name}
    protected = {"artifacts": str(folder.parent), "version": folder.name, **serve_settings,
                 "admission": True, "latency_budget": budget}  # fmt: skip
    report: dict[str, Any] = {"peer": "ray-serve", "slo_p99_ms": slo * 1000, "latency_budget_ms": budget * 1000,
                              "cores": {"server (Ray: GCS, raylet, proxy, replica)": sorted(server),
                                        "load generator": sorted(generator)}}  # fmt: skip
    with running_on(generator):
        log("peer ray-serve, as Ray ships it (unbounded queue): unloaded, then the sustainable rate")
        with RayServeProcess(peer_base, cpus=server) as peer:
            unloaded = measure_run(peer, UNLOADED_RPS, unloaded_seconds, texts, seed, timeout=10)
            log(f"  unloaded p99 {unloaded['latency_ms']['p99']} ms")
            sustainable, steps = sustainable_rate(
                peer.url, texts, slo=slo, start_rps=start_rps, step_seconds=step_seconds, seed=seed, log=log,
                confirm_samples=P99_MIN_SAMPLES, none_is_an_answer=True,
            )  # fmt: skip
            log(f"  8x unbounded: {overload_rps:.0f} rps for {overload_seconds:.0f} s")
            unbounded = measure_run(peer, overload_rps, overload_seconds, texts, seed, timeout=10, slo=slo)
            log(f"  p99 {unbounded['latency_ms']['p99']} ms, {unbounded['throughput_rps']:.1f} answered/s")
        with ServiceProcess(protected, cpus=server) as service:
            log(f"peakguard, admission on: {overload_rps:.0f} rps for {overload_seconds:.0f} s, beside the peer's")
            ours_overload = measure_run(service, overload_rps, overload_seconds, texts, seed, timeout=10, slo=slo)
        # The rate the model answers on this core when saturated: the peer's own where it showed one
        # (with an unbounded queue at 8x every request can time out and show none), and at least
        # peakguard's, the same model on the same core. A queue of what that rate drains within the
        # budget is the longest that can meet it; a shorter one would refuse the peer's own batches.
        capacity = max(unbounded["throughput_rps"], sustainable, ours_overload["throughput_rps"])
        bound = queue_bound(budget, capacity)
        bounded = peer_base | {"max_ongoing": bound - 1, "max_queued": 1}
        # Where the peer sustains no rate within the SLO, the rate it still answered in full (the
        # search's first step) is the equal answered rate: both answer everything, p99s compared.
        rate = min(sustainable or start_rps, ours["sustainable_rps"])
        equal_seconds = P99_MIN_SAMPLES / rate * 1.1 + 1
        log(f"peer ray-serve, queue bounded at {bound} ({capacity:.1f} answers/s for the {budget * 1000:.0f} ms "
            f"budget): {overload_rps:.0f} rps, then {rate:.1f} rps")  # fmt: skip
        with RayServeProcess(bounded, cpus=server) as peer:
            overload = measure_run(peer, overload_rps, overload_seconds, texts, seed, timeout=10, slo=slo)
            peer_equal = measure_run(peer, rate, equal_seconds, texts, seed, timeout=10)
        with ServiceProcess(protected, cpus=server) as service:
            ours_equal = measure_run(service, rate, equal_seconds, texts, seed, timeout=10)
    for name, run_ in (("peer at 8x", overload), ("peakguard at 8x", ours_overload),
                       ("peakguard at equal rate", ours_equal), ("peer at equal rate", peer_equal)):  # fmt: skip
        log(f"  {name}: p99 {run_['latency_ms']['p99']} ms, {run_['throughput_rps']:.1f} answered/s, "
            f"shed {run_['shed']}, 5xx {run_['errors_5xx']}")  # fmt: skip
    return report | {
        "unloaded": unloaded, "unloaded_p99_ms": _p99_s(unloaded) * 1000, "ramp": steps,
        "sustainable_rps": sustainable, "overload_unbounded": unbounded, "capacity_rps": capacity,
        "queue_bound": bound, "bounded_settings": bounded, "overload_rps": overload_rps, "overload": overload,
        "peakguard_overload": ours_overload,
        "equal_rate_rps": rate, "equal_rate": {"peakguard": ours_equal, "peer": peer_equal},
    }  # fmt: skip


def compare_or_say_why(folder: Path, ours: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """`compare`, or `{"error": why}` when the peer could not be measured (Ray would not start, say):
    one stack's failure must not cost a run its other figures."""
    try:
        return compare(folder, ours, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:  # ServiceStartError is a RuntimeError
        kwargs.get("log", print)(f"peer not measured: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def figures(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, tuple[float, list[str]]]:
    """Each peer figure (name: value, why it is invalid), and the two ratios its goals judge."""
    # peakguard's 8x run beside the peer's (older reports have only the service run's).
    ours_overload = peer.get("peakguard_overload") or ours["overload_protected"]
    lag = [r for r in peer["overload"]["invalid_because"] if r.startswith("generator")]
    ours_lag = [r for r in ours_overload["invalid_because"] if r.startswith("generator")]
    confirm = [step["invalid_because"] for step in peer["ramp"] if step["kind"] == "confirm"]
    confirmed = (
        [r for group in confirm for r in group] if confirm else ["the peer's sustainable rate was never confirmed"]
    )
    if not peer["sustainable_rps"]:
        confirmed = []  # sustaining nothing within the SLO is measured, not missing
    equal_ours, equal_peer = peer["equal_rate"]["peakguard"], peer["equal_rate"]["peer"]
    answered = (equal_ours["throughput_rps"], equal_peer["throughput_rps"])
    unequal = (
        [f"answered {answered[0]:.1f}/s (peakguard) vs {answered[1]:.1f}/s (peer): not an equal rate"]
        if abs(answered[0] - answered[1]) > EQUAL_RATE_TOLERANCE * max(answered)
        else []
    )
    equal_invalid = invalid_because(equal_ours) + invalid_because(equal_peer) + unequal
    goodput_ours = ours_overload.get("goodput_rps", math.nan)
    unbounded = peer["overload_unbounded"]
    return {
        "peer.unloaded_p99_ms": (peer["unloaded_p99_ms"], invalid_because(peer["unloaded"])),
        "peer.sustainable_rps": (peer["sustainable_rps"], confirmed),
        "peer.overload_goodput_rps": (peer["overload"]["goodput_rps"], lag),
        "peer.overload_5xx": (peer["overload"]["errors_5xx"], lag),
        "peer.overload_p99_ms": (_p99_s(peer["overload"]) * 1000, peer["overload"]["invalid_because"]),
        "peer.overload_p99_ms_unbounded": (_p99_s(unbounded) * 1000, unbounded["invalid_because"]),
        "peer.equal_rate_p99_ms": (_p99_s(equal_peer) * 1000, invalid_because(equal_peer)),
        "overload_goodput_rps": (goodput_ours, ours_lag),
        "equal_rate_p99_ms": (_p99_s(equal_ours) * 1000, invalid_because(equal_ours)),
        "peer_goodput_ratio": (_ratio(goodput_ours, peer["overload"]["goodput_rps"]), lag + ours_lag),
        "peer_equal_rate_p99_ratio": (_p99_s(equal_ours) / _p99_s(equal_peer), equal_invalid),
    }


def _ratio(ours: float, peer: float) -> float:
    """ours / peer; a peer that answered nothing within the SLO loses to any answer (inf), not by
    a factor that only measures a guard against dividing by zero."""
    if peer > 0:
        return ours / peer
    return math.inf if ours > 0 else math.nan


def run_against(report: dict[str, Any], artifacts: Path, *, texts: Sequence[str], repetition: int = 1,
                unloaded_seconds: float, step_seconds: float, overload_seconds: float,
                log: Log = print) -> dict[str, Any]:  # fmt: skip
    """The peer measured against a recorded `bench model` run: its SLO, budget, sustainable and 8x
    rates (from repetition `repetition`), the same model version under `artifacts`. peakguard's
    runs that the ratios compare are made again here, beside the peer's."""
    repetitions = report.get("repetitions") or []
    if not 1 <= repetition <= len(repetitions) or "sustainable_rps" not in repetitions[repetition - 1]:
        raise ValueError(f"the report has no service run in repetition {repetition} (it has {len(repetitions)} "
                         "repetitions; a --no-service report has none)")  # fmt: skip
    ours = repetitions[repetition - 1]
    folder = artifacts / report["version"]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the report's model version is not under --artifacts {artifacts}")
    settings = report.get("settings", {})
    serve_settings = dict(settings.get("serve_settings") or ())
    seed = int(settings.get("seed", 0)) + repetition - 1
    peer = compare(folder, ours, texts=texts, seed=seed, unloaded_seconds=unloaded_seconds, step_seconds=step_seconds,
                   start_rps=float(settings.get("start_rps", 10.0)), overload_seconds=overload_seconds,
                   serve_settings=serve_settings,
                   log=log)  # fmt: skip
    judged = {name: {"value": value, "invalid_because": sorted(set(reasons))}
              for name, (value, reasons) in figures(ours, peer).items()}  # fmt: skip
    goals = judge_goals({name: {"median": figure["value"], "valid": not figure["invalid_because"]}
                         for name, figure in judged.items()})  # fmt: skip
    return {"version": report["version"], "against_repetition": repetition, "peer": peer, "figures": judged,
            "goals": goals}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The two columns a person reads, the runs behind them, and the goals."""
    peer = result["peer"]
    rows = [
        ("unloaded p99 (ms)", None, result["figures"]["peer.unloaded_p99_ms"]),
        ("sustainable rate (rps, p99 within the SLO)", None, result["figures"]["peer.sustainable_rps"]),
        ("goodput at 8x (answers within the SLO per s)", result["figures"]["overload_goodput_rps"],
         result["figures"]["peer.overload_goodput_rps"]),
        ("p99 at 8x (ms)", None, result["figures"]["peer.overload_p99_ms"]),
        ("5xx at 8x", None, result["figures"]["peer.overload_5xx"]),
        (f"p99 at {peer['equal_rate_rps']:.1f} rps, the lower sustainable rate (ms)",
         result["figures"]["equal_rate_p99_ms"], result["figures"]["peer.equal_rate_p99_ms"]),
    ]  # fmt: skip
    lines = [f"model version {result['version']}; SLO p99 {peer['slo_p99_ms']:.1f} ms, budget "
             f"{peer['latency_budget_ms']:.1f} ms; the peer's queue bounded at {peer['queue_bound']} "
             f"({peer['capacity_rps']:.1f} answers/s for the budget)",
             f"  {'':54} {'peakguard':>12} {'ray-serve':>12}"]  # fmt: skip
    for label, ours, theirs in rows:
        cells = [f"{f['value']:12.1f}{'' if not f['invalid_because'] else '*'}" if f else f"{'':>12}"
                 for f in (ours, theirs)]  # fmt: skip
        lines.append(f"  {label:54} {cells[0]} {cells[1]}")
    runs = (("peer, unbounded, 8x", peer["overload_unbounded"]), ("peer, bounded, 8x", peer["overload"]),
            ("peakguard, 8x", peer["peakguard_overload"]), ("peer, equal rate", peer["equal_rate"]["peer"]),
            ("peakguard, equal rate", peer["equal_rate"]["peakguard"]))  # fmt: skip
    for label, run_ in runs:
        lines.append(f"  {label:22} p99 {run_['latency_ms']['p99']} ms, {run_['throughput_rps']:.1f} answered/s, "
                     f"shed {run_['shed']}, 5xx {run_['errors_5xx']}, timeouts/transport {run_['transport_errors']}, "
                     f"send lag p99 {run_['send_lag_ms']['p99']} ms")  # fmt: skip
    for name, figure in result["figures"].items():
        lines.extend(f"  * {name}: {reason}" for reason in figure["invalid_because"])
    for name, goal in result["goals"].items():
        verdict = ("met" if goal["met"] else "MISSED") if goal["valid"] else "INVALID"
        lines.append(f"goal {name}: {goal['value']:.3f} {goal['goal']}: {verdict}")
    return "\n".join(lines)
