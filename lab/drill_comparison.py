"""The predictive variant's numbers (lab.drill_predictive): when capacity came in each arm, against
the surge's start, and what clients saw in the surge's first seconds.

Capacity is the full model's Ready replicas, sampled every half second by the drill, against the most
the lab runs (its HPA maximum). A sample stands for at most `SAMPLE_HOLD` seconds: time no sample
covers is reported as unmeasured, never as capacity. A comparison whose predictive arm did not
forecast (the history or the runbook failed) or whose forecast could add nothing (the night's rate
already asks for every replica) is marked invalid, with why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.drill import DrillSettings, Timeline, full_replicas_most
from lab.drill_predictive import PredictiveRun
from lab.drill_report import ONE_MACHINE
from model_service.load_generator import percentile

__all__ = ["EARLY_SECONDS", "SAMPLE_HOLD", "compare", "plot", "render"]

EARLY_SECONDS = 10.0
"""The surge's first seconds: where capacity that is already there differs from capacity on its way."""
SAMPLE_HOLD = 1.0
"""Seconds one capacity sample stands for at most (they come every half second)."""
_RUNBOOKS = {"reactive": {"emergency-stop"}, "predictive": {"predictive-scale", "emergency-stop"}}
"""The runbooks each arm may run: taking the fleet back is not part of the comparison."""


def compare(result: PredictiveRun, settings: DrillSettings) -> dict[str, Any]:
    """Both arms' capacity and early-surge figures, the forecast's plan, and whether it all holds."""
    most = full_replicas_most(settings.max_pods)
    minute = 60 * settings.time_scale
    arms = {name: _arm(name, timeline, most, minute) for name, timeline in result.arms.items()}
    predictive = result.arms["predictive"]
    cycle = _cycle_plan(predictive)
    invalid = [f"{name}: {why}" for name, arm in arms.items() for why in arm.pop("problems")]
    if cycle is None or cycle.get("exit") != 0:
        invalid.append("predictive: predictive-scale did not run to exit 0")
    elif (cycle.get("basis") or {}).get("needNow", 0) >= most:
        invalid.append(f"predictive: the rate now already asked for all {most} replicas; the forecast added nothing")
    return {
        "time_scale": settings.time_scale,
        "full_capacity_replicas": most,
        "history": predictive.history,
        "predictive_scale": cycle,
        "arms": arms,
        "valid": not invalid,
        "invalid_because": invalid,
    }


def _arm(name: str, timeline: Timeline, most: int, minute: float) -> dict[str, Any]:
    surge, after = timeline.phase_start("surge"), timeline.phase_start("after")
    samples = list(timeline.capacity)
    ready_at = next((t for t, ready, _ in samples if ready >= most), None)
    lead = None if ready_at is None else round(surge - ready_at, 1)
    short, unmeasured = short_of(samples, most, surge, after)
    early = [r for r in timeline.requests if r.phase == "surge" and timeline.started + r.at < surge + EARLY_SECONDS]
    answered = [r.latency for r in early if r.latency is not None]
    p99 = percentile(answered, 99)
    problems = []
    if "error" in timeline.history:
        problems.append(f"no history: {timeline.history['error']}")
    if not samples:
        problems.append("no capacity was sampled")
    elif unmeasured > SAMPLE_HOLD:
        problems.append(f"{unmeasured:g} s of the surge without a capacity sample")
    ran = {entry["runbook"] for entry in timeline.runbooks}
    if ran - _RUNBOOKS[name]:
        problems.append(f"ran {', '.join(sorted(ran - _RUNBOOKS[name]))}, which the comparison excludes")
    return {
        "ready_replicas_at_surge": ready_at_moment(samples, surge),
        "full_capacity_lead_s": lead,
        "full_capacity_lead_minutes": None if lead is None else round(lead / minute, 1),
        "short_of_full_capacity_in_surge_s": short,
        "unmeasured_in_surge_s": unmeasured,
        "early_surge": {
            "seconds": EARLY_SECONDS,
            "requests": len(early),
            "answered": len(answered),
            "shed": sum(r.outcome == "shed" for r in early),
            "failed": sum(r.outcome in ("failed", "dropped") for r in early),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        },
        "first_alert_s": None if not timeline.alerts else round(min(timeline.alerts.values()) - surge, 1),
        "runbooks": [
            {key: entry.get(key) for key in ("runbook", "exit", "journal")}
            | {"started_s": round(entry["started"] - surge, 1)}
            for entry in timeline.runbooks
        ],
        "problems": problems,
    }


def ready_at_moment(samples: Sequence[tuple[float, int, int]], moment: float) -> int | None:
    """Ready replicas at `moment`: the last sample at most SAMPLE_HOLD before it, else None."""
    before = [(t, ready) for t, ready, _ in samples if moment - SAMPLE_HOLD <= t <= moment]
    return before[-1][1] if before else None


def short_of(samples: Sequence[tuple[float, int, int]], most: int, start: float, end: float) -> tuple[float, float]:
    """(seconds short of `most` Ready replicas, seconds no sample covers) between `start` and `end`.
    Each sample stands until the next one, for at most SAMPLE_HOLD seconds."""
    short = covered = 0.0
    for (t, ready, _), following in zip(samples, [*(s[0] for s in samples[1:]), math.inf], strict=False):
        overlap = min(following, t + SAMPLE_HOLD, end) - max(t, start)
        if overlap > 0:
            covered += overlap
            if ready < most:
                short += overlap
    return round(short, 1), round(max(0.0, end - start) - covered, 1)


def _cycle_plan(timeline: Timeline) -> dict[str, Any] | None:
    """predictive-scale's run: its exit and the plan's basis (the forecast and the minimum it set)."""
    entry = next((e for e in timeline.runbooks if e["runbook"] == "predictive-scale"), None)
    if entry is None:
        return None
    seconds = None if "ended" not in entry else round(entry["ended"] - entry["started"], 1)
    found: dict[str, Any] = {"exit": entry.get("exit"), "journal": entry.get("journal"), "seconds": seconds}
    for line in Path(entry["journal"]).read_text().splitlines() if entry.get("journal") else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a last line cut short: the records before it stand
            continue
        if record.get("event") == "run_started":
            basis = record["plan"]["basis"]
            found["basis"] = {key: basis.get(key) for key in (
                "rpsNow", "forecastAt", "forecastP90Rps", "model", "replicaRps", "needNow", "needAhead",
                "minReplicas", "cappedByMax")}  # fmt: skip
    if entry.get("exit") not in (0, None):
        found["output"] = entry.get("output", "")[-2000:]
    return found


def render(numbers: dict[str, Any]) -> str:
    """The terminal summary of the comparison."""
    lines = []
    cycle = numbers["predictive_scale"]
    if cycle is None:
        lines.append("predictive-scale: did not run")
    else:
        basis = cycle.get("basis") or {}
        capped = " (capped by the maximum)" if basis.get("cappedByMax") else ""
        lines.append(
            f"predictive-scale: exit {cycle['exit']} in {cycle['seconds']} s; rate now {basis.get('rpsNow')} rps "
            f"(needs {basis.get('needNow')} with the headroom), p90 forecast {basis.get('forecastP90Rps')} rps at "
            f"{basis.get('forecastAt')} ({basis.get('model')}, needs {basis.get('needAhead')}); HPA minimum -> "
            f"{basis.get('minReplicas')}{capped}"
        )
    most = numbers["full_capacity_replicas"]
    for name, arm in numbers["arms"].items():
        lead = arm["full_capacity_lead_s"]
        if lead is None:
            came = "not in the run" if arm["unmeasured_in_surge_s"] == 0 else "not measured"
        elif lead >= 0:
            came = f"{lead:g} s before the surge ({arm['full_capacity_lead_minutes']:g} min of the history's time)"
        else:
            came = f"{-lead:g} s after the surge began ({-arm['full_capacity_lead_minutes']:g} min)"
        early = arm["early_surge"]
        p99 = "-" if early["p99_ms"] is None else f"{early['p99_ms']:.0f} ms"
        alert = arm["first_alert_s"]
        paged = "none" if alert is None else f"{alert:g} s after it began" if alert >= 0 else f"{-alert:g} s before it"
        lines.append(
            f"{name:10} {most} Ready replicas {came}; {arm['ready_replicas_at_surge']} Ready as it began; short of "
            f"{most} for {arm['short_of_full_capacity_in_surge_s']} s of the surge; its first {early['seconds']:g} s: "
            f"p99 {p99}, {early['answered']} answered, {early['shed']} shed, {early['failed']} failed; first alert "
            f"{paged}"
        )
    if not numbers["valid"]:
        lines.append("NOT A VALID COMPARISON: " + "; ".join(numbers["invalid_because"]))
    lines.append(
        "Replicas here are processes with a thread each on this machine's cores: up to the cores, one more "
        "adds capacity; beyond them, none. " + ONE_MACHINE.split(": ", 1)[0] + "."
    )
    return "\n".join(lines)


def plot(result: PredictiveRun, numbers: dict[str, Any], path: Path) -> None:
    """Ready replicas and offered rate in each arm, from its surge's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (replicas, rate) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for name, timeline in result.arms.items():
        surge = timeline.phase_start("surge")
        replicas.step([t - surge for t, _, _ in timeline.capacity], [r for _, r, _ in timeline.capacity],
                      where="post", label=f"{name}: Ready replicas")  # fmt: skip
        seconds = [timeline.started + r.at - surge for r in timeline.requests]
        if seconds:
            first = math.floor(min(seconds))
            counts = [0] * (math.ceil(max(seconds)) - first + 1)
            for second in seconds:
                counts[int(second - first)] += 1
            rate.plot(range(first, first + len(counts)), counts, label=f"{name}: offered req/s", alpha=0.7)
    for axis in (replicas, rate):
        axis.axvline(0, color="grey", linestyle="--")
        axis.legend(loc="upper left", fontsize=8)
    replicas.set_ylabel("Ready full replicas")
    rate.set_ylabel("requests/s")
    k = numbers["time_scale"]
    rate.set_xlabel(f"seconds from the surge's start (k = {k:g}: a minute of the history's time is {60 * k:g} s)")
    figure.suptitle("predictive-scale before the daily peak vs reactive scaling")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
