"""`peakguard forecast backtest`: the LSTM beside seasonal naive and Holt-Winters on one series,
under `forecast.protocol`'s protocol, judged by `forecast.metrics`, each LSTM seed reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecast import baselines, metrics
from forecast.protocol import Protocol, calibrated_p90, horizon_steps
from forecast.series import Series

__all__ = ["MODELS", "Backtest", "ModelRun", "run"]

MODELS = ("lstm", "holt_winters", "seasonal_naive")
_FIGURES = ("mase", "smape", "pinball_p90", "under_p90_share", "over_provision_share")


@dataclass(frozen=True)
class ModelRun:
    """One model's held-out forecasts (one per target) and its figures."""

    name: str
    point: np.ndarray
    p90: np.ndarray
    seconds: float
    figures: dict[str, float]


@dataclass
class Backtest:
    series: Series
    protocol: Protocol
    targets: np.ndarray
    """Indices of the held-out points."""
    runs: dict[str, list[ModelRun]] = field(default_factory=dict)
    """Per model, one run per seed (the baselines have one)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, runs in self.runs.items():
            entry: dict[str, Any] = {k: statistics.fmean(r.figures[k] for r in runs) for k in _FIGURES}
            entry["fit_seconds"] = statistics.fmean(r.seconds for r in runs)
            if len(runs) > 1:
                entry["seeds"] = [{"seed": seed, **r.figures} for seed, r in zip(self.seeds, runs, strict=True)]
                entry |= {f"{k}_range": [min(r.figures[k] for r in runs), max(r.figures[k] for r in runs)]
                          for k in _FIGURES}  # fmt: skip
            models[name] = entry
        report: dict[str, Any] = {
            "series": self.series.report(),
            "protocol": {
                "train_share": self.protocol.train_share,
                "horizon_steps": self.protocol.horizon,
                "horizon_minutes": self.protocol.horizon * self.series.step.total_seconds() / 60,
                "season_steps": self.protocol.season,
                "held_out_points": len(self.targets),
                "held_out_from": self.series.index[self.targets[0]].isoformat(),
                "refit": False,
                "p90": f"the model's own p90 plus the 90th percentile of its excess over the last "
                f"{self.protocol.calibration_points} held-out points known at each origin",
                "mase_scale": "MAE of one day's seasonal naive on the training part",
            },
            "models": models,
            "seeds": list(self.seeds),
            "seconds": self.seconds,
        }
        if "lstm" in models and "holt_winters" in models:
            report["lstm_mase_vs_holt_winters"] = models["lstm"]["mase"] / models["holt_winters"]["mase"] - 1
        return report

    seeds: Sequence[int] = (0,)


def run(series: Series, *, horizon: pd.Timedelta, seeds: Sequence[int] = (0,), models: Sequence[str] = MODELS,
        events: Sequence[tuple[pd.Timestamp, pd.Timestamp]] = (), log: Any = print) -> Backtest:  # fmt: skip
    """Backtest `models` on `series` (the LSTM once per seed)."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; models: {', '.join(MODELS)}")
    started = time.perf_counter()
    values = series.values
    protocol = Protocol(horizon=horizon_steps(horizon, series.step), season=series.steps_per_day)
    cut = protocol.cut(len(values))
    targets = np.arange(cut, len(values))
    scale = metrics.naive_scale(values[:cut], protocol.season)
    result = Backtest(series, protocol, targets, seeds=tuple(seeds))

    def judged(name: str, first: int, point: np.ndarray, raw_p90: np.ndarray, seconds: float) -> ModelRun:
        p90 = calibrated_p90(values, raw_p90, first, targets, protocol, since=cut)
        held_point, actual = point[targets - first], values[targets]
        figures = {
            "mase": metrics.mase(actual, held_point, scale),
            "smape": metrics.smape(actual, held_point),
            "pinball_p90": metrics.pinball(actual, p90),
            "under_p90_share": metrics.under_share(actual, p90),
            "over_provision_share": metrics.over_provision_share(actual, p90),
        }
        log(f"  {name}: MASE {figures['mase']:.3f}, p90 covers {1 - figures['under_p90_share']:.1%} ({seconds:.1f} s)")
        return ModelRun(name, held_point, p90, seconds, figures)

    if "seasonal_naive" in models:
        clock = time.perf_counter()
        first, point = baselines.seasonal_naive(values, protocol.season)
        result.runs["seasonal_naive"] = [judged("seasonal_naive", first, point, point, time.perf_counter() - clock)]
    if "holt_winters" in models:
        clock = time.perf_counter()
        first, point = baselines.holt_winters(values, protocol.season, protocol.horizon, cut)
        result.runs["holt_winters"] = [judged("holt_winters", first, point, point, time.perf_counter() - clock)]
    if "lstm" in models:
        from forecast import lstm  # torch only when an LSTM is asked for

        calendar = lstm.calendar_features(series.index, events)
        result.runs["lstm"] = []
        for seed in seeds:
            clock = time.perf_counter()
            first, median, p90 = lstm.forecast(values, calendar, season=protocol.season, horizon=protocol.horizon,
                                               cut=cut, settings=lstm.LstmSettings(seed=seed))  # fmt: skip
            result.runs["lstm"].append(judged(f"lstm (seed {seed})", first, median, p90, time.perf_counter() - clock))
    result.seconds = time.perf_counter() - started
    return result
