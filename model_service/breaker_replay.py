"""Two circuit-breaker settings judged on the same answers: `peakguard bench breaker`.

Whether a breaker opens under 8x is a rare event on a noisy machine (the third acceptance bench saw
it in two of three repetitions), so two settings run one after the other would each meet a
different run. Here the server's own breaker is held shut (its trip far above any latency), so the
full model answers throughout, and every answer's server-side latency (the client's, from the
scheduled send, less the generator's send lag) is replayed in completion order, on a replayed
clock, through a breaker of each setting. Both see the very same latencies; what differs is only
when, or whether, each would have opened.

The run is the bench's 8x: the sustainable rate for `confirm_seconds` (where `bench model` leaves
the service when its surge starts), then `overload_factor` times it, admission on with the given
latency budget, server on one core and generator on the other, as `bench model` pins them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_service.breaker import BreakerSettings, CircuitBreaker
from model_service.load_generator import LAG_BAR_MS, P99_MIN_SAMPLES, Phase, Request, query_texts, run_phases
from model_service.service_process import ServiceProcess, running_on, split_cores

__all__ = ["BreakerReplaySettings", "Setting", "render", "replay", "run"]

Log = Callable[[str], None]
_SHUT = {"trip_above": 1e6, "recover_below": 5e5}
"""The server's own breaker: never opens, so the full model answers every admitted request."""


@dataclass(frozen=True)
class Setting:
    """A breaker's timing: the p99 window and how long the p99 must stay over the trip."""

    name: str
    window: float
    trip_after: float


OLD = Setting("10 s window, 5 s trip (before 2026-12-07)", 10.0, 5.0)
NEW = Setting("5 s window, 10 s trip (serve's default)", BreakerSettings.window, BreakerSettings.trip_after)


@dataclass(frozen=True)
class BreakerReplaySettings:
    artifacts: Path
    latency_budget: float
    """Seconds, admission's budget (`bench model` reports it: `latency_budget_ms`)."""
    slo: float
    """Seconds: the breakers trip over it, as in `bench model`."""
    sustainable_rps: float
    version: str = ""
    data: Path | None = None
    runs: int = 3
    confirm_seconds: float = 30.0
    overload_factor: float = 8.0
    overload_seconds: float = 60.0
    settings: tuple[Setting, ...] = (OLD, NEW)
    serve_settings: tuple[tuple[str, Any], ...] = (("batch_budget_share", 0.5),)

    def __post_init__(self) -> None:
        if not 0 < self.latency_budget < self.slo:
            raise ValueError(
                f"the latency budget ({self.latency_budget} s) must be > 0 and below the SLO ({self.slo} s)"
            )
        if self.sustainable_rps <= 0 or self.runs < 1 or self.overload_seconds <= 0:
            raise ValueError("sustainable_rps and overload_seconds must be > 0, runs >= 1")


def _breaker_settings(setting: Setting, slo: float) -> BreakerSettings:
    """The setting as a breaker's; built field by field because the old timing (window longer than
    the trip) is refused by BreakerSettings now, and replaying it is the point."""
    settings = BreakerSettings(trip_above=slo, recover_below=slo / 2)
    for name, value in (("window", setting.window), ("trip_after", setting.trip_after)):
        object.__setattr__(settings, name, value)
    return settings


def replay(answers: Sequence[tuple[float, float]], setting: Setting, slo: float) -> dict[str, Any]:
    """What a breaker of `setting`, tripping over `slo`, would have done on `answers` ((completion
    time, latency) seconds, in completion order): when it opened, its highest p99, and the longest
    stretch its p99 stayed over the trip."""
    now = [0.0]
    opened: list[dict[str, float]] = []
    breaker = CircuitBreaker(
        _breaker_settings(setting, slo),
        on_switch=lambda state, p99: opened.append({"at_s": round(now[0], 2), "p99_ms": round(p99 * 1000, 1)})
        if state else None,
        clock=lambda: now[0],
    )  # fmt: skip
    highest, longest, over_since = 0.0, 0.0, None
    quiet = logging.getLogger("peakguard.breaker")  # a replayed switch is not the service's: not logged as one
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        for at, latency in answers:
            now[0] = at
            breaker.record(latency)
            p99 = breaker.p99()
            if p99 is None:
                continue
            highest = max(highest, p99)
            if p99 > slo:
                over_since = at if over_since is None else over_since
                longest = max(longest, at - over_since)
            else:
                over_since = None
    finally:
        quiet.disabled = was_disabled
    return {"opened": opened, "max_p99_ms": round(highest * 1000, 1), "longest_over_trip_s": round(longest, 2)}


def answers_of(requests: Sequence[Request]) -> list[tuple[float, float]]:
    """(completion time, server-side latency) of every answered request, in completion order."""
    return sorted((r.at + r.latency, r.latency - r.lag) for r in requests if r.outcome == "answered" and r.latency)


def run(settings: BreakerReplaySettings, *, log: Log = print) -> dict[str, Any]:
    from model_service.artifacts import newest_version

    version = settings.version or newest_version(settings.artifacts)
    texts = query_texts(settings.data)
    server, generator = split_cores("bench breaker")
    overload = settings.overload_factor * settings.sustainable_rps
    serve = {"artifacts": str(settings.artifacts), "version": version, **dict(settings.serve_settings),
             "admission": True, "latency_budget": settings.latency_budget, "breaker": _SHUT}  # fmt: skip
    runs = []
    for index in range(settings.runs):
        log(f"run {index + 1}/{settings.runs}: {settings.sustainable_rps:g} rps for {settings.confirm_seconds:g} s, "
            f"then {overload:g} rps for {settings.overload_seconds:g} s")  # fmt: skip
        requests: list[Request] = []
        phases = [Phase("sustainable", settings.confirm_seconds, settings.sustainable_rps),
                  Phase("8x", settings.overload_seconds, overload)]  # fmt: skip
        with ServiceProcess(serve, cpus=server) as service, running_on(generator):
            asyncio.run(run_phases(f"{service.url}/v1/intent", phases, texts, record=requests.append, seed=index,
                                   timeout=10))  # fmt: skip
            breaker_open = service.status()["breaker"]["open"]
        answers = answers_of(requests)
        lags = sorted(r.lag for r in requests if r.outcome != "dropped")
        lag_p99 = lags[int(0.99 * (len(lags) - 1))] if lags else None
        served = sorted({r.served_by for r in requests if r.outcome == "answered"})
        invalid = []
        if lag_p99 is None or lag_p99 * 1000 > LAG_BAR_MS:
            invalid.append(f"generator send lag p99 {None if lag_p99 is None else round(lag_p99 * 1000, 1)} ms > "
                           f"{LAG_BAR_MS:g} ms: the generator fell behind")  # fmt: skip
        if breaker_open or served != ["model"]:
            invalid.append(f"the server's own breaker opened or something else answered ({served})")
        if len(answers) < P99_MIN_SAMPLES:
            invalid.append(f"{len(answers)} answers < {P99_MIN_SAMPLES}: a p99 needs more")
        entry: dict[str, Any] = {
            "answers": len(answers),
            "shed": sum(r.outcome == "shed" for r in requests),
            "failed": sum(r.outcome in ("failed", "dropped") for r in requests),
            "send_lag_p99_ms": None if lag_p99 is None else round(lag_p99 * 1000, 2),
            "surge_starts_at_s": settings.confirm_seconds,
            "invalid_because": invalid,
            "settings": {s.name: replay(answers, s, settings.slo) for s in settings.settings},
        }
        runs.append(entry)
        log("  " + "; ".join(f"{name}: opened {'at ' + str(r['opened'][0]['at_s']) + ' s' if r['opened'] else 'never'}"
                             for name, r in entry["settings"].items()))  # fmt: skip
    return {
        "version": version,
        "settings": dataclasses.asdict(settings) | {"artifacts": str(settings.artifacts), "data": str(settings.data)},
        "runs": runs,
    }


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"breaker settings on the same answers, version {report['version']}: {s['sustainable_rps']:g} rps for "
        f"{s['confirm_seconds']:g} s, then {s['overload_factor']:g}x for {s['overload_seconds']:g} s; budget "
        f"{s['latency_budget'] * 1000:.0f} ms, trip over the {s['slo'] * 1000:.0f} ms SLO",
        "",
    ]
    for index, entry in enumerate(report["runs"], 1):
        verdict = "  INVALID: " + "; ".join(entry["invalid_because"]) if entry["invalid_because"] else ""
        lines.append(f"run {index}: {entry['answers']} answers, {entry['shed']} shed, send lag p99 "
                     f"{entry['send_lag_p99_ms']} ms{verdict}")  # fmt: skip
        for name, result in entry["settings"].items():
            when = (f"opened {result['opened'][0]['at_s'] - entry['surge_starts_at_s']:.1f} s into the surge"
                    if result["opened"] else "stayed shut")  # fmt: skip
            lines.append(f"  {name:44} {when}; p99 up to {result['max_p99_ms']} ms, over the trip for at most "
                         f"{result['longest_over_trip_s']} s at a stretch")  # fmt: skip
    counts = {
        name: sum(bool(e["settings"][name]["opened"]) for e in report["runs"] if not e["invalid_because"])
        for name in report["runs"][0]["settings"]
    }
    valid = sum(not e["invalid_because"] for e in report["runs"])
    lines += ["", "opened in " + ", ".join(f"{n} of {valid} valid runs: {name}" for name, n in counts.items())]
    return "\n".join(lines)
