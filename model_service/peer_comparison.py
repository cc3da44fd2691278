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

from model_service.benchmark import UNLOADED_RPS, measure_run, sustainable_rate
from model_service.load_generator import P99_MIN_SAMPLES, invalid_because
from model_service.ray_peer import RayServeProcess, queue_bound
from model_service.service_process import ServiceProcess, running_on, split_cores

__all__ = ["compare", "figures"]

Log = Callable[[str], None]

EQUAL_RATE_TOLERANCE = 0.05
"""Answered rates closer than this share count as equal; further apart, the p99 ratio is invalid."""


def _p99_s(report: dict[str, Any]) -> float:
    value = report["latency_ms"]["p99"]
    return math.inf if value is None else float(value) / 1000


def compare(folder: Path, ours: dict[str, Any], *, texts: Sequence[str], seed: int, unloaded_seconds: float,
            step_seconds: float, start_rps: float, overload_seconds: float, serve_settings: dict[str, Any],
            log: Log = print) -> dict[str, Any]:  # fmt: skip
    """The peer measured against `ours` (one repetition of `benchmark._service`'s report)."""
    server, generator = split_cores("bench model --peer")
    slo, budget = ours["slo_p99_ms"] / 1000, ours["latency_budget_ms"] / 1000
    peer_base = {"artifacts": str(folder.parent), "version": folder.name}
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
                confirm_samples=P99_MIN_SAMPLES,
            )  # fmt: skip
            log(f"  8x unbounded: {ours['overload_rps']:.0f} rps for {overload_seconds:.0f} s")
            unbounded = measure_run(peer, ours["overload_rps"], overload_seconds, texts, seed, timeout=10, slo=slo)
            log(f"  p99 {unbounded['latency_ms']['p99']} ms, {unbounded['throughput_rps']:.1f} answered/s")
        bound = queue_bound(budget, max(unbounded["throughput_rps"], sustainable))
        bounded = peer_base | {"max_ongoing": bound - 1, "max_queued": 1}
        rate = min(sustainable, ours["sustainable_rps"])
        equal_seconds = P99_MIN_SAMPLES / rate * 1.1 + 1
        log(f"peer ray-serve, queue bounded at {bound} for the {budget * 1000:.0f} ms budget: "
            f"{ours['overload_rps']:.0f} rps, then {rate:.1f} rps")  # fmt: skip
        with RayServeProcess(bounded, cpus=server) as peer:
            overload = measure_run(peer, ours["overload_rps"], overload_seconds, texts, seed, timeout=10, slo=slo)
            peer_equal = measure_run(peer, rate, equal_seconds, texts, seed, timeout=10)
        protected = {"artifacts": str(folder.parent), "version": folder.name, **serve_settings,
                     "admission": True, "latency_budget": budget}  # fmt: skip
        with ServiceProcess(protected, cpus=server) as service:
            ours_equal = measure_run(service, rate, equal_seconds, texts, seed, timeout=10)
    for name, run_ in (("overload", overload), ("peakguard at equal rate", ours_equal),
                       ("peer at equal rate", peer_equal)):  # fmt: skip
        log(f"  {name}: p99 {run_['latency_ms']['p99']} ms, {run_['throughput_rps']:.1f} answered/s, "
            f"shed {run_['shed']}, 5xx {run_['errors_5xx']}")  # fmt: skip
    return report | {
        "unloaded": unloaded, "unloaded_p99_ms": _p99_s(unloaded) * 1000, "ramp": steps,
        "sustainable_rps": sustainable, "overload_unbounded": unbounded, "queue_bound": bound,
        "bounded_settings": bounded,
        "overload_rps": ours["overload_rps"], "overload": overload,
        "equal_rate_rps": rate, "equal_rate": {"peakguard": ours_equal, "peer": peer_equal},
    }  # fmt: skip


def figures(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, tuple[float, list[str]]]:
    """Each peer figure (name: value, why it is invalid), and the two ratios its goals judge."""
    lag = [r for r in peer["overload"]["invalid_because"] if r.startswith("generator")]
    ours_lag = [r for r in ours["overload_protected"]["invalid_because"] if r.startswith("generator")]
    confirm = [step["invalid_because"] for step in peer["ramp"] if step["kind"] == "confirm"]
    confirmed = (
        [r for group in confirm for r in group] if confirm else ["the peer's sustainable rate was never confirmed"]
    )
    equal_ours, equal_peer = peer["equal_rate"]["peakguard"], peer["equal_rate"]["peer"]
    answered = (equal_ours["throughput_rps"], equal_peer["throughput_rps"])
    unequal = (
        [f"answered {answered[0]:.1f}/s (peakguard) vs {answered[1]:.1f}/s (peer): not an equal rate"]
        if abs(answered[0] - answered[1]) > EQUAL_RATE_TOLERANCE * max(answered)
        else []
    )
    equal_invalid = invalid_because(equal_ours) + invalid_because(equal_peer) + unequal
    goodput_ours = ours["overload_protected"].get("goodput_rps", math.nan)
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
        "peer_goodput_ratio": (goodput_ours / max(peer["overload"]["goodput_rps"], 1e-9), lag + ours_lag),
        "peer_equal_rate_p99_ratio": (_p99_s(equal_ours) / _p99_s(equal_peer), equal_invalid),
    }
