"""The drill's predictive variant (`peakguard drill surge --predictive`): be warm before the wave.

The same surge, twice, on a fresh lab each time, after one calibration:

- **reactive**: nobody forecasts; the surge pages, and the autopilot runs emergency-stop, whose
  scale-out is the reactive path (the lab does not play the HPA's own metric loop);
- **predictive**: as the traffic starts, predictive-scale runs with the CronJob's arguments
  (`--stand-aside`, the default 15-minute horizon and 14 days of history), then the same autopilot.

In both, CloudWatch (moto) holds fifteen days of the ALB's RequestCount in which this surge came
every day at this time of day: the steady rate at night, the surge's rate for as long as it lasts.
A step minutes after a quiet night cannot be forecast 15 minutes ahead; a daily peak can. The
drill's clock is compressed by k (a minute is 60k seconds: 3 s at k = 0.05), so the surge,
`--steady` seconds away, is steady/(60k) minutes away in the history's time: within the forecast's
horizon. The runbook reads that history in real time, so one cycle is played (the one the CronJob
runs before the peak): later cycles would read the same history.

lab.drill_comparison says when capacity came in each arm and what clients saw.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import zlib
from dataclasses import dataclass, replace
from typing import Any

from lab.alb import PERIOD, write_request_count
from lab.drill import AtStart, DrillError, DrillSettings, Log, Prepared, Timeline, prepare, run_lab, run_runbook
from lab.lab import Lab

__all__ = ["ARMS", "HORIZON_MINUTES", "DailyPeak", "PredictiveRun", "check", "daily_peak", "default_steady", "run"]

ARMS = ("reactive", "predictive")
HORIZON_MINUTES = 15.0
"""The CronJob's horizon by default (`predictiveScale.horizonMinutes`, infra/config.py), the runbook's too."""
HISTORY_DAYS = 15.0
"""Days of history written: the 14 the runbook reads by default (the CronJob passes none), and one more."""
_NOISE = 0.05
"""The history's period-to-period spread (a share of the rate): no real series is a clean step."""
_LEAD = HORIZON_MINUTES - PERIOD.total_seconds() / 60
"""The most minutes of the history's time before the surge that the one cycle's forecast can see:
the period it forecasts holds now + horizon, so it may start up to a period earlier."""


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


def default_steady(time_scale: float) -> float:
    """Seconds of steady traffic that put the surge as far ahead as the one cycle's forecast sees."""
    return _LEAD * 60 * time_scale


def check(settings: DrillSettings) -> None:
    """Refuse, before minutes of calibration, what the variant cannot do or could not compare."""
    if settings.fault is not None:
        raise DrillError("--predictive compares when capacity came with and without a forecast: drop --fault")
    if not settings.autopilot:
        raise DrillError(
            "--predictive compares with reactive scaling, which is the autopilot's emergency-stop here (the lab does "
            "not play the HPA's metric loop): drop --no-autopilot"
        )
    if settings.max_pods < 4:
        raise DrillError(
            f"--predictive needs --max-pods 4 or more (got {settings.max_pods}): the night's rate with the 30% "
            "headroom already asks for two replicas, so with fewer the forecast would add nothing to compare"
        )
    if importlib.util.find_spec("statsmodels") is None:
        raise DrillError("--predictive runs predictive-scale, which needs the forecast extra: "
                         "pip install -e '.[lab,forecast]' (make setup installs it)")  # fmt: skip
    minute = 60 * settings.time_scale
    lead, lasts = settings.steady_seconds / minute, settings.surge_seconds / minute
    period = PERIOD.total_seconds() / 60
    if lead > _LEAD:
        raise DrillError(
            f"the surge comes {lead:.1f} minutes into the history's time (--steady {settings.steady_seconds:g} s at "
            f"k = {settings.time_scale:g}), past what a {HORIZON_MINUTES:g}-minute forecast sees: at most "
            f"{_LEAD * minute:g} s of --steady"
        )
    # The forecast period starts by now + horizon, and the history's periods take the rate at their
    # start: the surge must outlast now + horizon by a period, for the seconds the cycle takes to start.
    if lead + lasts < HORIZON_MINUTES + period:
        raise DrillError(
            f"the surge lasts {lasts:.1f} minutes of the history's time and ends before the {HORIZON_MINUTES:g}-minute "
            f"forecast's period: --steady + --surge must be at least {(HORIZON_MINUTES + period) * minute:g} s at "
            f"k = {settings.time_scale:g}"
        )


@dataclass
class PredictiveRun:
    prepared: Prepared
    arms: dict[str, Timeline]


def run(settings: DrillSettings, *, log: Log = print) -> PredictiveRun:
    """Both arms, reactive first, on one calibration; each arm's lab, journals and logs in `out/<arm>`."""
    check(settings)
    # Mitigated is enough: taking the fleet back (rebuild, the upgrade) is not the question here.
    settings = replace(settings, rebuild=False, upgrade=False)
    prepared = prepare(settings, log=log)
    arms: dict[str, Timeline] = {}
    for arm in ARMS:
        log(f"--- {arm}: the surge {'after predictive-scale ran' if arm == 'predictive' else 'with no forecast'} ---")
        own = replace(settings, out=settings.out / arm)
        arms[arm] = run_lab(own, prepared, log=log, at_start=_at_start(own, log, cycle=arm == "predictive"))
    return PredictiveRun(prepared, arms)


def _at_start(settings: DrillSettings, log: Log, *, cycle: bool) -> AtStart:
    def at_start(lab: Lab, timeline: Timeline) -> None:
        try:
            _history(lab, settings, timeline)
        except Exception as error:  # noqa: BLE001 (a thread's failure is the report's, never a silent gap)
            timeline.history["error"] = f"{type(error).__name__}: {error}"
            log(f"the history could not be written: {timeline.history['error']}")
            return
        if not cycle:
            return
        log("predictive-scale: the CronJob's cycle, before the surge")
        timeline.note("predictive-scale: the CronJob's cycle")
        run_runbook(lab, settings, timeline, "predictive-scale", "--stand-aside",
                    "--replica-rps", f"{timeline.calibration['sustainable_rps']:g}",
                    "--horizon", f"{HORIZON_MINUTES:g}")  # fmt: skip

    return at_start


def _history(lab: Lab, settings: DrillSettings, timeline: Timeline) -> None:
    if not lab.request_count_dimensions:
        raise DrillError(f"the stack config of {settings.env} gives the model service no Ingress: no ALB to forecast")
    now = timeline.started
    peak = daily_peak(settings, timeline, at=now)
    written = write_request_count(lab.client_args(), lab.request_count_dimensions, peak.rate, days=HISTORY_DAYS,
                                  end=dt.datetime.fromtimestamp(now, dt.UTC))  # fmt: skip
    timeline.history.update(peak.as_dict(), datapoints=written, days=HISTORY_DAYS)
    timeline.note(f"history: {written} periods of RequestCount, the surge daily at minute {peak.opens:.0f} UTC")
