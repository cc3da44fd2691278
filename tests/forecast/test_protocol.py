"""The backtest protocol (`forecast.protocol`) and the baselines under it (`forecast.baselines`):
horizons in whole steps, the refusals, the calibrated p90 that sees only what its origin knew, and
forecasts that never read a value after their origin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast import metrics
from forecast.baselines import holt_winters, seasonal_naive
from forecast.protocol import Protocol, calibrated_p90, horizon_steps

SEASON = 48  # a day of 30-minute steps


@pytest.mark.parametrize(
    ("horizon", "step", "steps"),
    [
        pytest.param("15min", "5min", 3, id="15m-at-5m"),
        pytest.param("15min", "30min", 1, id="15m-at-30m-rounds-up-to-one-step"),
        pytest.param("16min", "5min", 4, id="16m-at-5m-rounds-up"),
        pytest.param("1h", "30min", 2, id="1h-at-30m"),
    ],
)
def test_the_horizon_is_the_whole_steps_that_cover_it(horizon: str, step: str, steps: int) -> None:
    assert horizon_steps(pd.Timedelta(horizon), pd.Timedelta(step)) == steps


@pytest.mark.parametrize("horizon", ["0min", "-15min"])
def test_a_horizon_that_is_not_positive_is_refused(horizon: str) -> None:
    with pytest.raises(ValueError, match="the horizon must be positive"):
        horizon_steps(pd.Timedelta(horizon), pd.Timedelta("5min"))


@pytest.mark.parametrize("horizon", [0, SEASON - 1, SEASON, SEASON + 1])
def test_the_protocol_refuses_a_horizon_outside_one_step_to_under_a_day(horizon: int) -> None:
    # 0 steps ahead is no forecast; a day or more ahead is not what the protocol judges (its season).
    with pytest.raises(ValueError, match=r"must be at least 1 and under a day less one step \(47\)"):
        Protocol(horizon=horizon, season=SEASON)


def test_the_protocol_takes_a_horizon_of_a_day_less_two_steps() -> None:
    # The LSTM reads the value a day before the target and the step after it, which must be known.
    assert Protocol(horizon=SEASON - 2, season=SEASON).horizon == SEASON - 2


@pytest.mark.parametrize("share", [0.0, 0.49, 1.0, 1.2])
def test_the_protocol_refuses_a_train_share_outside_half_to_all(share: float) -> None:
    with pytest.raises(ValueError, match=r"train_share must be in \[0.5, 1\)"):
        Protocol(horizon=1, season=SEASON, train_share=share)


@pytest.mark.parametrize("share", [0.5, 0.99])
def test_the_protocol_takes_a_train_share_inside_half_to_all(share: float) -> None:
    assert Protocol(horizon=1, season=SEASON, train_share=share).train_share == share


def test_the_cut_is_the_first_held_out_point_after_the_train_share() -> None:
    assert Protocol(horizon=1, season=SEASON).cut(480) == 384
    assert Protocol(horizon=1, season=SEASON).cut(122) == 97  # just over two days to train on


def test_the_cut_refuses_a_series_with_two_days_or_less_to_train_on() -> None:
    # int(121 x 0.8) = 96 points: exactly two days, not enough to fit a season and judge it.
    with pytest.raises(ValueError, match="121 points leave too little"):
        Protocol(horizon=1, season=SEASON).cut(121)


def test_the_cut_refuses_a_series_with_too_little_to_hold_out() -> None:
    # 0.99 of 300 leaves 3 points past the cut; a 3-step horizon needs at least 4.
    with pytest.raises(ValueError, match="300 points leave too little"):
        Protocol(horizon=3, season=SEASON, train_share=0.99).cut(300)


def test_the_p90_is_calibrated_only_on_excesses_known_at_each_targets_origin() -> None:
    # The model's own p90 was right until point 12; from then on actuals exceed it by 1000. A
    # target whose origin is before point 12 must not know that (the protocol's no-peeking
    # promise); the target whose origin is point 12 knows that one excess, and later ones more.
    protocol, first = Protocol(horizon=3, season=SEASON), 10
    raw = np.linspace(50.0, 80.0, 40)  # raw[i] is the p90 for point first + i
    actual = np.zeros(first + len(raw))
    actual[first:] = raw
    actual[12:] += 1000.0
    targets = np.arange(first, len(actual))

    p90 = calibrated_p90(actual, raw, first, targets, protocol, since=0)

    offsets = p90 - raw
    assert list(offsets[:5]) == [0.0] * 5  # targets 10-14: origins up to point 11
    assert offsets[5] == pytest.approx(np.quantile([0.0, 0.0, 1000.0], 0.9))  # target 15, origin 12
    assert offsets[-1] == pytest.approx(1000.0)


def test_the_p90_is_calibrated_on_at_most_the_last_calibration_points() -> None:
    # Excesses of 1000 long ago, then 1, 2, 3, 4: a window of 4 sees only the last four.
    protocol = Protocol(horizon=1, season=SEASON, calibration_points=4)
    actual = np.array([1000.0] * 20 + [1.0, 2.0, 3.0, 4.0] + [0.0] * 6)
    raw = np.zeros(len(actual))

    p90 = calibrated_p90(actual, raw, 0, np.array([24]), protocol, since=0)  # origin 23: points 0-23 known

    assert p90[0] == pytest.approx(np.quantile([1.0, 2.0, 3.0, 4.0], 0.9))


def test_a_target_with_no_known_excess_keeps_the_models_own_p90() -> None:
    # Targets 10-12 at 3 steps ahead have origins 7-9, before the model's first forecast (10).
    protocol, first = Protocol(horizon=3, season=SEASON), 10
    raw = np.array([5.0, 6.0, 7.0, 8.0, 9.0])
    actual = np.concatenate([np.zeros(first), raw + 500.0])

    p90 = calibrated_p90(actual, raw, first, np.array([10, 11, 12]), protocol, since=0)

    assert list(p90) == [5.0, 6.0, 7.0]


def test_a_p90_that_was_too_high_is_lowered_by_the_calibration() -> None:
    # Split-conformal: the offset is the excess's 90th percentile, negative when the model over-forecasts.
    protocol = Protocol(horizon=1, season=SEASON)
    raw = np.full(20, 100.0)
    actual = np.full(20, 60.0)

    p90 = calibrated_p90(actual, raw, 0, np.array([19]), protocol, since=0)

    assert p90[0] == pytest.approx(60.0)


def test_the_seasonal_naive_forecasts_each_point_by_the_one_a_season_earlier() -> None:
    values = np.arange(10.0, 30.0)
    first, forecasts = seasonal_naive(values, 7)

    assert first == 7
    assert len(forecasts) == len(values) - 7
    for point in (7, 12, 19):
        assert forecasts[point - first] == values[point - 7]


def _daily_sine_with_trend(days: int = 10) -> np.ndarray:
    """Traffic that grows 0.2 an interval through a daily cycle: 30-minute steps."""
    t = np.arange(days * SEASON, dtype=float)
    return 100 + 40 * np.sin(2 * np.pi * t / SEASON) + 0.2 * t


@pytest.mark.parametrize("horizon", [1, 3])
def test_holt_winters_forecasts_a_clean_trend_and_season_far_better_than_the_seasonal_naive(horizon: int) -> None:
    # An additive trend and season is exactly Holt-Winters' model, so its error is near 0; the
    # seasonal naive misses each point by a day's growth, MASE 1 by construction.
    values = _daily_sine_with_trend()
    protocol = Protocol(horizon=horizon, season=SEASON)
    cut = protocol.cut(len(values))
    targets = np.arange(cut, len(values))
    scale = metrics.naive_scale(values[:cut], SEASON)

    first, forecasts = holt_winters(values, SEASON, horizon, cut)
    naive_first, naive = seasonal_naive(values, SEASON)

    assert first <= cut and len(forecasts) == len(values) - first
    holt = metrics.mase(values[targets], forecasts[targets - first], scale)
    yesterday = metrics.mase(values[targets], naive[targets - naive_first], scale)
    assert yesterday == pytest.approx(1.0)
    assert holt < 0.02


def test_a_holt_winters_forecast_does_not_change_when_a_later_value_does() -> None:
    # Values from point 420 on (held out) change: forecasts of points whose origin is before 420
    # must be bit-for-bit the same; the forecast made at origin 420 must see the change.
    horizon, changed_from = 3, 420
    values = _daily_sine_with_trend()
    cut = Protocol(horizon=horizon, season=SEASON).cut(len(values))
    later = values.copy()
    later[changed_from:] += 500.0

    first, before = holt_winters(values, SEASON, horizon, cut)
    _, after = holt_winters(later, SEASON, horizon, cut)

    last_blind = changed_from + horizon - 1 - first  # the point whose origin is 419
    assert np.array_equal(before[: last_blind + 1], after[: last_blind + 1])
    assert after[last_blind + 1] != before[last_blind + 1]


def test_points_before_since_never_calibrate() -> None:
    """A backtest calibrates on held-out points only: the fitted part's excesses would flatter it."""
    protocol = Protocol(horizon=1, season=SEASON, calibration_points=10)
    actual = np.zeros(40)
    actual[:20] = 100.0  # large excesses, all before `since`
    raw = np.zeros(40)

    p90 = calibrated_p90(actual, raw, 0, np.array([21, 30]), protocol, since=20)

    assert list(p90) == [0.0, 0.0]
