"""The backtest protocol, stated once: fit on the first 80%, then forecast each held-out point
`horizon` steps ahead from the actual history up to its origin, with no refit.

Every model's p90 is calibrated the same way (`calibrated_p90`): its own p90 (the LSTM's quantile
output; a baseline's point forecast) plus the 90th percentile of how far actuals exceeded it over
the last `calibration_points` points already known at the origin. That is split-conformal
calibration on a rolling window, fed only the history the protocol allows, and only points the
model was not fitted on; it keeps the p90 honest when the held-out part differs from the training
part (NYC taxi's test months hold the holidays: the LSTM's own quantile covered 80-86% there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Protocol", "calibrated_p90", "horizon_steps"]


def horizon_steps(horizon: pd.Timedelta, step: pd.Timedelta) -> int:
    """Steps ahead that cover `horizon`: 15 minutes is 3 steps of 5 minutes, 1 step of 30 (the
    nearest that covers it)."""
    if horizon <= pd.Timedelta(0):
        raise ValueError(f"the horizon must be positive, got {horizon}")
    return max(1, int(-(-horizon // step)))  # ceiling division of Timedeltas


@dataclass(frozen=True)
class Protocol:
    horizon: int
    """Steps ahead each forecast is made."""
    season: int
    """Steps per day: the seasonal naive's lag and Holt-Winters' period."""
    train_share: float = 0.8
    calibration_points: int = 288
    """Recent known points the p90 is calibrated on: a day at 5 minutes, six at 30 (measured: 87-91%
    coverage on both NAB series, against 80-93% uncalibrated)."""

    def __post_init__(self) -> None:
        # Under a day less one step: the LSTM reads the value a day before the target and the step after it.
        if not 1 <= self.horizon < self.season - 1:
            raise ValueError(f"the horizon ({self.horizon} steps) must be at least 1 and under a day less one step "
                             f"({self.season - 1})")  # fmt: skip
        if not 0.5 <= self.train_share < 1:
            raise ValueError(f"train_share must be in [0.5, 1), got {self.train_share}")

    def cut(self, points: int) -> int:
        """Index of the first held-out point."""
        cut = int(points * self.train_share)
        if cut <= 2 * self.season or points - cut < self.horizon + 1:
            raise ValueError(f"{points} points leave too little to train on (two days) or to hold out")
        return cut


def calibrated_p90(actual: np.ndarray, raw_p90: np.ndarray, first: int, targets: np.ndarray,
                   protocol: Protocol, *, since: int) -> np.ndarray:  # fmt: skip
    """The p90 for each of `targets` (indices into `actual`). `raw_p90[i]` is the model's own p90
    for point `first + i`, made `protocol.horizon` steps before it; only points up to each
    target's origin calibrate it, and only those from `since` on: points the model was fitted on
    would flatter it (its in-sample excesses are smaller), so a backtest calibrates on held-out
    points alone, and its first targets go uncalibrated until some are known."""
    excess = actual[first : first + len(raw_p90)] - raw_p90
    out = np.empty(len(targets))
    for k, target in enumerate(targets):
        known = target - protocol.horizon - first + 1  # excesses of points up to the origin
        window = excess[max(0, since - first, known - protocol.calibration_points) : max(0, known)]
        offset = float(np.quantile(window, 0.9)) if len(window) else 0.0
        out[k] = raw_p90[target - first] + offset
    return out
