"""The baselines an LSTM must beat: yesterday at this time (seasonal naive) and Holt-Winters
(additive trend and daily season, statsmodels), both under the backtest's protocol."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["holt_winters", "seasonal_naive"]


def seasonal_naive(values: np.ndarray, season: int, *, ahead: int = 0) -> tuple[int, np.ndarray]:
    """(first, forecasts): the forecast of point t is point t - season, for every t from `first`
    to the last point, and `ahead` points past it (at most a season)."""
    return season, values[: len(values) + ahead - season].copy()


def holt_winters(values: np.ndarray, season: int, horizon: int, cut: int, *, ahead: int = 0) -> tuple[int, np.ndarray]:
    """(first, forecasts): Holt-Winters fitted once on `values[:cut]`, then run over the whole
    series with those parameters (statsmodels filters the states; nothing is refitted), each point
    forecast `horizon` steps ahead from the states at its origin: level + h x trend + the season of
    the target's time of day, as last estimated. `ahead` (at most `horizon`) adds the points past
    the last whose origins are known."""
    if not 0 <= ahead <= horizon:
        raise ValueError(f"ahead ({ahead}) must be between 0 and the horizon ({horizon})")
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        # The optimiser warns when it stops at its iteration cap; the fit it returns is still the
        # one the protocol judges, and the backtest reports its figures, not its convergence.
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = ExponentialSmoothing(values[:cut], trend="add", seasonal="add", seasonal_periods=season).fit()
        params = fitted.params
        filtered = ExponentialSmoothing(
            values, trend="add", seasonal="add", seasonal_periods=season, initialization_method="known",
            initial_level=params["initial_level"], initial_trend=params["initial_trend"],
            initial_seasonal=params["initial_seasons"],
        ).fit(
            smoothing_level=params["smoothing_level"], smoothing_trend=params["smoothing_trend"],
            smoothing_seasonal=params["smoothing_seasonal"], optimized=False,
        )  # fmt: skip
    level, trend, seasonal = np.asarray(filtered.level), np.asarray(filtered.trend), np.asarray(filtered.season)
    first = season  # the season term needs origin + horizon - season >= 0
    origins = np.arange(first, len(values) + ahead) - horizon
    return first, level[origins] + horizon * trend[origins] + seasonal[origins + horizon - season]
