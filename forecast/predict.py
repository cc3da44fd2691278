"""The rate `horizon` steps past the last observation, and its p90: what predictive-scale plans
capacity from. The backtest's protocol, run forward: the model is fitted on all but the last
`calibration_points` points, then fed the actual history to its end, and its p90 is calibrated on
those last points' excesses (never on the points it was fitted on, which would flatter it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecast import baselines
from forecast.protocol import Protocol, calibrated_p90

__all__ = ["MODELS", "Prediction", "predict"]

MODELS = ("holt_winters", "lstm", "seasonal_naive")


@dataclass(frozen=True)
class Prediction:
    at: pd.Timestamp
    """The time forecast: the last observation plus the horizon."""
    point: float
    p90: float
    model: str
    fitted_on: int
    """Points the model was fitted on (the rest calibrated its p90)."""


def predict(values: np.ndarray, index: pd.DatetimeIndex, *, horizon: int, model: str = "holt_winters", seed: int = 0,
            events: Sequence[tuple[pd.Timestamp, pd.Timestamp]] = ()) -> Prediction:  # fmt: skip
    """`values` one per step of `index` (regular, oldest first). ValueError says what is missing."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    if len(values) != len(index) or len(index) < 3:
        raise ValueError("one value per timestamp, and at least three of them")
    step = pd.Timedelta(index[1] - index[0])
    protocol = Protocol(horizon=horizon, season=int(pd.Timedelta(days=1) // step))
    n = len(values)
    cut = n - protocol.calibration_points
    if cut < 2 * protocol.season + protocol.calibration_points:
        days = (2 * protocol.season + 2 * protocol.calibration_points) * step / pd.Timedelta(days=1)
        raise ValueError(f"{n} points ({n * step}) of history; forecasting needs {days:g} days of it")
    extended = np.concatenate([values.astype(np.float64), np.full(horizon, np.nan)])
    target = n - 1 + horizon
    if model == "seasonal_naive":
        first, point = baselines.seasonal_naive(values, protocol.season, ahead=horizon)
        raw = point
    elif model == "holt_winters":
        first, point = baselines.holt_winters(values, protocol.season, horizon, cut, ahead=horizon)
        raw = point
    else:
        from forecast import lstm  # torch only when an LSTM is asked for

        future = pd.date_range(index[0], periods=n + horizon, freq=step)
        first, point, raw = lstm.forecast(extended, lstm.calendar_features(future, events), season=protocol.season,
                                          horizon=horizon, cut=cut, settings=lstm.LstmSettings(seed=seed))  # fmt: skip
    p90 = calibrated_p90(extended, raw, first, np.array([target]), protocol, since=cut)[0]
    return Prediction(index[-1] + horizon * step, float(point[target - first]), float(p90), model, cut)
