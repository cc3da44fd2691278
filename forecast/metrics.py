"""How a forecast is judged. MASE is the main figure: the mean absolute error divided by that of
one day's seasonal-naive forecast on the training part, so 1.0 is "no better than yesterday at this
time" whatever the series' units. MAPE is avoided: it explodes where traffic is near zero."""

from __future__ import annotations

import numpy as np

__all__ = ["P90", "mase", "naive_scale", "over_provision_share", "pinball", "smape", "under_share"]

P90 = 0.9


def naive_scale(train: np.ndarray, season: int) -> float:
    """MAE of forecasting each training point by the one a season before (MASE's denominator)."""
    if len(train) <= season:
        raise ValueError(f"the training part ({len(train)} points) must be longer than one season ({season})")
    scale = float(np.mean(np.abs(train[season:] - train[:-season])))
    if scale == 0.0:
        raise ValueError("the training part repeats itself exactly every season: MASE is undefined")
    return scale


def mase(actual: np.ndarray, forecast: np.ndarray, scale: float) -> float:
    return float(np.mean(np.abs(actual - forecast)) / scale)


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE in percent (0-200); a point where both are 0 counts as no error."""
    denominator = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(2 * np.abs(actual - forecast), denominator, out=np.zeros_like(denominator),
                      where=denominator > 0)  # fmt: skip
    return float(100 * np.mean(ratio))


def pinball(actual: np.ndarray, quantile_forecast: np.ndarray, q: float = P90) -> float:
    """Mean quantile (pinball) loss at `q`, in the series' units: under-forecasts cost q per unit,
    over-forecasts 1 - q."""
    diff = actual - quantile_forecast
    return float(np.mean(np.maximum(q * diff, (q - 1) * diff)))


def under_share(actual: np.ndarray, p90: np.ndarray) -> float:
    """Share of points whose actual exceeded the p90 forecast: under-provisioned if capacity follows it."""
    return float(np.mean(actual > p90))


def over_provision_share(actual: np.ndarray, p90: np.ndarray) -> float:
    """What provisioning to the p90 costs: capacity above the actual, as a share of the actual total."""
    return float(np.sum(np.maximum(p90 - actual, 0.0)) / max(float(np.sum(actual)), 1e-12))
