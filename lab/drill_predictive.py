"""The drill's predictive variant (`peakguard drill surge --predictive`): be warm before the wave.

The same surge, twice, on a fresh lab each time, after one calibration:

- **reactive**: nobody forecasts; the surge pages, and the autopilot runs emergency-stop, whose
  scale-out is the reactive path (the lab does not play the HPA's own metric loop);
- **predictive**: as the traffic starts, predictive-scale runs as its CronJob runs it
  (`--stand-aside`, a 15-minute horizon, five days of history), then the same autopilot.

In both, CloudWatch (moto) holds six days of the ALB's RequestCount in which this surge came every
day at this time of day: the steady rate at night, the surge's rate for as long as it lasts. A step
minutes after a quiet night cannot be forecast 15 minutes ahead; a daily peak can. The drill's
clock is compressed by k (1 minute is 60k seconds: 3 s at k = 0.05), so the surge, `--steady`
seconds away, is steady/(60k) minutes away in the history's time: within the forecast's horizon.
The runbook reads that history in real time, so one cycle is played (the one the CronJob runs
before the peak): later cycles would read the same history.

What is compared is when capacity came: the full model's Ready replicas against the most the lab
runs (its HPA maximum), sampled every half second, relative to the surge's start; and what clients
saw in the surge's first seconds.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lab.alb import write_request_count
from lab.drill import AtStart, DrillError, DrillSettings, Log, Prepared, Timeline, prepare, run_lab, run_runbook
from lab.lab import Lab
from model_service.load_generator import percentile

__all__ = [
    "ARMS",
    "HISTORY_DAYS",
    "HORIZON_MINUTES",
    "DailyPeak",
    "PredictiveRun",
    "compare",
    "daily_peak",
    "plot",
    "render",
    "run",
]

ARMS = ("reactive", "predictive")
HORIZON_MINUTES = 15.0
"""predictive-scale's default horizon, the CronJob's (infra/predictive_scale_job.py)."""
HISTORY_DAYS = 5.0
"""What the runbook reads (its minimum); a day more is written, so its first day is whole."""
EARLY_SECONDS = 10.0
"""The surge's first seconds, where capacity that is already there shows in what clients see."""
_NOISE = 0.05
"""The history's period-to-period spread (a share of the rate): no real series is a clean step."""


@dataclass(frozen=True)
class DailyPeak:
    """A request rate with one peak a day: `night_rps`, and `peak_rps` for `minutes` from the
    minute of day `opens` (UTC), each 5-minute period off by up to `noise` of its rate."""

    night_rps: float
    peak_rps: float
    opens: float
    minutes: float
    noise: float = _NOISE
    seed: int = 0

    def rate(self, t: dt.datetime) -> float:
        t = t.astimezone(dt.UTC)
        minute = t.hour * 60 + t.minute + t.second / 60
        base = self.peak_rps if (minute - self.opens) % 1440 < self.minutes else self.night_rps
        # The same period always gets the same spread (a history written twice is the same history).
        spread = (zlib.crc32(f"{self.seed}:{int(t.timestamp())}".encode()) / 2**32 - 0.5) * 2 * self.noise
        return base * (1 + spread)

    def as_dict(self) -> dict[str, Any]:
        return {"night_rps": self.night_rps, "peak_rps": self.peak_rps, "opens_utc_minute": round(self.opens, 2),
                "minutes": self.minutes, "noise": self.noise}  # fmt: skip


def daily_peak(settings: DrillSettings, timeline: Timeline, *, at: float) -> DailyPeak:
    """The peak the history repeats: this run's surge, placed where the compressed clock puts it
    when the history is written at Unix time `at`."""
    (steady, surge, _after) = timeline.phases
    minute = 60 * settings.time_scale  # real seconds a minute of the history's time takes
    surge_starts = dt.datetime.fromtimestamp(at, dt.UTC) + dt.timedelta(
        minutes=(timeline.phase_start("surge") - at) / minute
    )
    opens = surge_starts.hour * 60 + surge_starts.minute + surge_starts.second / 60
    return DailyPeak(steady.rps, surge.rps, opens, surge.seconds / minute, seed=settings.seed)


def check(settings: DrillSettings) -> None:
    """Refuse, before minutes of calibration, what the variant cannot do."""
    if settings.fault is not None:
        raise DrillError("--predictive compares when capacity came with and without a forecast: drop --fault")
    if importlib.util.find_spec("statsmodels") is None:
        raise DrillError("--predictive runs predictive-scale, which needs the forecast extra: "
                         "pip install -e '.[lab,forecast]' (make setup installs it)")  # fmt: skip
    minute = 60 * settings.time_scale
    lead, lasts = settings.steady_seconds / minute, settings.surge_seconds / minute
    # The one cycle played forecasts the 5-minute period holding now + horizon: that period must lie
    # wholly inside the surge (a CronJob every 5 minutes has a cycle whose target does).
    if lead > HORIZON_MINUTES - 5:
        raise DrillError(
            f"the surge comes {lead:.1f} minutes into the history's time (--steady {settings.steady_seconds:g} s at "
            f"k = {settings.time_scale:g}), past what a {HORIZON_MINUTES:g}-minute forecast sees: at most "
            f"{(HORIZON_MINUTES - 5) * minute:g} s of --steady"
        )
    if lead + lasts < HORIZON_MINUTES + 5:
        raise DrillError(
            f"the surge lasts {lasts:.1f} minutes of the history's time and ends before the {HORIZON_MINUTES:g}-minute "
            f"forecast's period: --steady + --surge must be at least {(HORIZON_MINUTES + 5) * minute:g} s at "
            f"k = {settings.time_scale:g}"
        )


@dataclass
class PredictiveRun:
    prepared: Prepared
    arms: dict[str, Timeline]


def run(settings: DrillSettings, *, log: Log = print) -> PredictiveRun:
    """Both arms, reactive first, on one calibration."""
    check(settings)
    # Mitigated is enough: taking the fleet back (rebuild, the upgrade) is not the question here.
    settings = replace(settings, rebuild=False, upgrade=False)
    prepared = prepare(settings, log=log)
    arms: dict[str, Timeline] = {}
    for arm in ARMS:
        log(f"--- {arm}: the surge {'after predictive-scale ran' if arm == 'predictive' else 'with no forecast'} ---")
        arms[arm] = run_lab(settings, prepared, log=log, at_start=_at_start(settings, log, cycle=arm == "predictive"))
    return PredictiveRun(prepared, arms)


def _at_start(settings: DrillSettings, log: Log, *, cycle: bool) -> AtStart:
    def at_start(lab: Lab, timeline: Timeline) -> None:
        now = timeline.started
        peak = daily_peak(settings, timeline, at=now)
        written = write_request_count(lab.client_args(), lab.request_count_dimensions, peak.rate,
                                      days=HISTORY_DAYS + 1, end=dt.datetime.fromtimestamp(now, dt.UTC))  # fmt: skip
        timeline.history = {**peak.as_dict(), "datapoints": written, "days": HISTORY_DAYS + 1}
        timeline.note(f"history: {written} periods of RequestCount, the surge daily at minute {peak.opens:.0f} UTC")
        if not cycle:
            return
        log("predictive-scale: the CronJob's cycle, before the surge")
        timeline.note("predictive-scale: the CronJob's cycle")
        run_runbook(lab, settings, timeline, "predictive-scale", "--stand-aside",
                    "--replica-rps", f"{timeline.calibration['sustainable_rps']:g}",
                    "--horizon", f"{HORIZON_MINUTES:g}", "--history-days", f"{HISTORY_DAYS:g}")  # fmt: skip

    return at_start


# --- The comparison ---------------------------------------------------------------------------------


def compare(result: PredictiveRun, settings: DrillSettings) -> dict[str, Any]:
    """When capacity came in each arm, and what clients saw early in the surge."""
    most = settings.max_pods - 1  # the full model's HPA maximum in the lab (lab.drill._program)
    minute = 60 * settings.time_scale
    arms = {}
    for name, timeline in result.arms.items():
        surge, after = timeline.phase_start("surge"), timeline.phase_start("after")
        ready_at = next((t for t, ready, _ in timeline.capacity if ready >= most), None)
        lead = None if ready_at is None else round(surge - ready_at, 1)
        early = [r for r in timeline.requests if r.phase == "surge" and timeline.started + r.at < surge + EARLY_SECONDS]
        answered = [r.latency for r in early if r.latency is not None]
        p99 = percentile(answered, 99)
        arms[name] = {
            "ready_replicas_at_surge": _ready_at(timeline.capacity, surge),
            "full_capacity_replicas": most,
            "full_capacity_lead_s": lead,
            "full_capacity_lead_minutes": None if lead is None else round(lead / minute, 1),
            "short_of_full_capacity_in_surge_s": _short(timeline.capacity, most, surge, after),
            "early_surge": {
                "seconds": EARLY_SECONDS,
                "requests": len(early),
                "answered": len(answered),
                "shed": sum(r.outcome == "shed" for r in early),
                "failed": sum(r.outcome in ("failed", "dropped") for r in early),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            },
            "first_alert_s": _first_alert(timeline, surge),
            "runbooks": [
                {k: entry.get(k) for k in ("runbook", "exit", "journal")}
                | {"started_s": round(entry["started"] - surge, 1)}
                for entry in timeline.runbooks
            ],
        }
    predictive = result.arms["predictive"]
    return {
        "time_scale": settings.time_scale,
        "history": predictive.history,
        "predictive_scale": _cycle_plan(predictive),
        "arms": arms,
    }


def _ready_at(capacity: Sequence[tuple[float, int, int]], moment: float) -> int | None:
    before = [ready for t, ready, _ in capacity if t <= moment]
    return before[-1] if before else None


def _short(capacity: Sequence[tuple[float, int, int]], most: int, start: float, end: float) -> float | None:
    """Seconds between `start` and `end` with fewer Ready replicas than `most`, from the samples
    (each holds until the next); None without samples in that time."""
    inside = [(t, ready) for t, ready, _ in capacity if t < end]
    if not any(t >= start for t, _ in inside):
        return None
    short = 0.0
    for (t, ready), (following, _) in zip(inside, [*inside[1:], (end, 0)], strict=True):
        overlap = min(following, end) - max(t, start)
        if overlap > 0 and ready < most:
            short += overlap
    return round(short, 1)


def _first_alert(timeline: Timeline, surge: float) -> float | None:
    first = min(timeline.alerts.values(), default=None)
    return None if first is None else round(first - surge, 1)


def _cycle_plan(timeline: Timeline) -> dict[str, Any] | None:
    """predictive-scale's run: its exit and the plan's basis (the forecast and the minimum it set)."""
    entry = next((e for e in timeline.runbooks if e["runbook"] == "predictive-scale"), None)
    if entry is None:
        return None
    seconds = None if "ended" not in entry else round(entry["ended"] - entry["started"], 1)
    found: dict[str, Any] = {"exit": entry.get("exit"), "journal": entry.get("journal"), "seconds": seconds}
    if entry.get("journal"):
        for line in Path(entry["journal"]).read_text().splitlines():
            record = json.loads(line)
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
        lines.append(
            f"predictive-scale: exit {cycle['exit']} in {cycle['seconds']} s; rate now {basis.get('rpsNow')} rps, "
            f"p90 forecast {basis.get('forecastP90Rps')} rps at {basis.get('forecastAt')} ({basis.get('model')}); "
            f"HPA minimum -> {basis.get('minReplicas')}{' (capped by the maximum)' if basis.get('cappedByMax') else ''}"
        )
    for name, arm in numbers["arms"].items():
        lead = arm["full_capacity_lead_s"]
        if lead is None:
            came = "never"
        elif lead >= 0:
            came = f"{lead:g} s before the surge ({arm['full_capacity_lead_minutes']:g} min of the history's time)"
        else:
            came = f"{-lead:g} s after the surge began ({-arm['full_capacity_lead_minutes']:g} min)"
        early = arm["early_surge"]
        p99 = "-" if early["p99_ms"] is None else f"{early['p99_ms']:.0f} ms"
        lines.append(
            f"{name:10} {arm['full_capacity_replicas']} Ready replicas {came}; {arm['ready_replicas_at_surge']} Ready "
            f"as it began; short of them {arm['short_of_full_capacity_in_surge_s']} s of the surge; first "
            f"{early['seconds']:g} s: p99 {p99}, {early['answered']} answered, {early['shed']} shed, "
            f"{early['failed']} failed; first alert {arm['first_alert_s']} s"
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
            edges = range(math.floor(min(seconds)), math.ceil(max(seconds)) + 1)
            counts = [0] * len(edges)
            for second in seconds:
                counts[int(second - edges[0])] += 1
            rate.plot(list(edges), counts, label=f"{name}: offered req/s", alpha=0.7)
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
