"""One report from the workers' results: their latency and lateness histograms added (exactly), their
counts summed, each worker's own figures kept beside, and why the run's figures may not be reported:
a worker that sent late (the generator's one bar, LAG_BAR_MS), too few answers for a p99
(P99_MIN_SAMPLES), a worker missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest import histograms
from model_service.load_generator import LAG_BAR_MS, P99_MIN_SAMPLES

__all__ = ["START_SPREAD_SECONDS", "merge", "plot"]

START_SPREAD_SECONDS = 1.0

_COUNTS = ("sent", "ok", "shed", "errors5xx", "transportErrors", "droppedByGenerator")


def merge(results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], *, expected_workers: int) -> dict[str, Any]:
    latency = histograms.merged(histograms.decode(r["latency"]) for r in results)
    lateness = histograms.merged(histograms.decode(r["lateness"]) for r in results)
    workers = []
    invalid = []
    for result in sorted(results, key=lambda r: r["index"]):
        own_lateness = histograms.summary_ms(histograms.decode(result["lateness"]))
        late = own_lateness["p99"] is not None and own_lateness["p99"] > LAG_BAR_MS
        if late:
            invalid.append(f"worker {result['index']} sent late: lateness p99 {own_lateness['p99']:.1f} ms > "
                           f"{LAG_BAR_MS:g} ms (give it more CPU, or use more workers)")  # fmt: skip
        workers.append({
            "index": result["index"], "seed": result["seed"], "rps": result["rps"], "startedAt": result["startedAt"],
            "sendingFrom": result.get("sendingFrom"),
            **{key: result[key] for key in _COUNTS},
            "latencyMs": histograms.summary_ms(histograms.decode(result["latency"])), "latenessMs": own_lateness,
        })  # fmt: skip
    if len(results) < expected_workers:
        invalid.append(f"{len(results)} of {expected_workers} workers reported")
    totals = {key: sum(int(r[key]) for r in results) for key in _COUNTS}
    if totals["ok"] < P99_MIN_SAMPLES:
        invalid.append(f"p99 from {totals['ok']} answers < {P99_MIN_SAMPLES}: lengthen the run")
    # When each worker's schedule began, by its own clock (node clocks are NTP-synced on EKS; a spread
    # above a second means the ramp was not shared).
    starts = [r.get("sendingFrom", r["startedAt"]) for r in results]
    spread = (max(starts) - min(starts)) if starts else None
    if spread is not None and spread > START_SPREAD_SECONDS:
        invalid.append(
            f"the workers began {spread:.2f} s apart (> {START_SPREAD_SECONDS:g} s): the ramp was not shared"
        )
    return {
        "plan": dict(plan),
        "totals": totals,
        "throughputRps": totals["ok"] / float(plan["duration"]),
        "latencyMs": histograms.summary_ms(latency),
        "latenessMs": histograms.summary_ms(lateness),
        "startSpreadSeconds": spread,
        "workers": workers,
        "histograms": {
            "latency": histograms.encode(latency),
            "lateness": histograms.encode(lateness),
            "unit": "microseconds",
            "digits": histograms.DIGITS,
        },
        "lagBarMs": LAG_BAR_MS,
        "invalidBecause": invalid,
    }


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Latency by percentile (log scale of 1/(1-p)), merged and per worker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merged = histograms.decode(report["histograms"]["latency"])
    percentiles = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99]
    x = [1 / (1 - p / 100) for p in percentiles]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    axis.plot(x, [merged.get_value_at_percentile(p) / 1000 for p in percentiles], marker="o", label="all workers")
    axis.set_xscale("log")
    axis.set_xticks(x, [f"p{p:g}" for p in percentiles])
    axis.set_ylabel("latency from scheduled send (ms)")
    totals = report["totals"]
    axis.set_title(f"{report['plan']['workers']} workers, {report['plan']['rps']:g} rps offered, "
                   f"{totals['ok']:,} answered, {totals['shed']:,} shed, {totals['errors5xx']:,} 5xx")  # fmt: skip
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
