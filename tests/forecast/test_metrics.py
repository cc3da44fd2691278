"""`forecast.metrics` on values small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.metrics import P90, mase, naive_scale, over_provision_share, pinball, smape, under_share


def _season_with_growth() -> np.ndarray:
    """Three seasons of 4 points that are not copies of each other (MASE needs a non-zero scale)."""
    return np.array([1.0, 5.0, 3.0, 2.0, 2.0, 7.0, 3.0, 4.0, 4.0, 8.0, 6.0, 4.0])


def test_the_naive_scale_is_the_mean_error_of_last_seasons_value() -> None:
    # Differences one season apart: 1 2 0 2, then 2 1 3 0: mean 11 / 8.
    assert naive_scale(_season_with_growth(), 4) == pytest.approx(11 / 8)


def test_a_perfect_forecast_has_mase_0() -> None:
    train = _season_with_growth()
    held_out = np.array([5.0, 9.0, 6.0, 5.0])
    assert mase(held_out, held_out.copy(), naive_scale(train, 4)) == 0.0


def test_the_seasonal_naive_on_the_training_part_has_mase_1() -> None:
    # That is what MASE's scale is: "no better than last season" reads 1.0 whatever the units.
    train = _season_with_growth() * 37.5
    assert mase(train[4:], train[:-4], naive_scale(train, 4)) == pytest.approx(1.0)


def test_mase_divides_the_mean_absolute_error_by_the_scale() -> None:
    assert mase(np.array([10.0, 10.0]), np.array([12.0, 7.0]), 2.0) == pytest.approx(2.5 / 2.0)


@pytest.mark.parametrize("points", [3, 4])
def test_the_naive_scale_refuses_a_training_part_no_longer_than_a_season(points: int) -> None:
    with pytest.raises(ValueError, match=r"must be longer than one season \(4\)"):
        naive_scale(np.arange(points, dtype=float), 4)


def test_the_naive_scale_refuses_a_perfectly_periodic_series() -> None:
    # Its scale is 0: any forecast error would divide by zero.
    with pytest.raises(ValueError, match="repeats itself exactly every season"):
        naive_scale(np.tile([1.0, 5.0, 3.0, 2.0], 3), 4)


def test_smape_matches_hand_computed_values() -> None:
    # |100 - 80| * 2 / 180 = 0.2222..., |50 - 60| * 2 / 110 = 0.1818..., exact: 0; mean x 100.
    actual, forecast = np.array([100.0, 50.0, 7.0]), np.array([80.0, 60.0, 7.0])
    assert smape(actual, forecast) == pytest.approx(100 * (40 / 180 + 20 / 110 + 0) / 3)


def test_smape_is_200_when_one_side_is_zero() -> None:
    assert smape(np.array([0.0, 4.0]), np.array([3.0, 0.0])) == pytest.approx(200.0)


def test_smape_counts_a_point_where_both_are_zero_as_no_error() -> None:
    # Night-time traffic is often 0: 0 against 0 must not be a 0/0 that poisons the mean.
    assert smape(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 10.0])) == 0.0
    assert smape(np.array([0.0, 10.0]), np.array([0.0, 5.0])) == pytest.approx(100 * (0 + 10 / 15) / 2)


def test_pinball_at_p90_charges_09_per_unit_under_and_01_per_unit_over() -> None:
    # Under-forecasting by 10 (actual above the p90) costs 9; over-forecasting by 10 costs 1.
    assert P90 == 0.9
    assert pinball(np.array([110.0]), np.array([100.0])) == pytest.approx(9.0)
    assert pinball(np.array([90.0]), np.array([100.0])) == pytest.approx(1.0)
    # One of each, and an exact point: (0.9 x 4 + 0.1 x 6 + 0) / 3.
    assert pinball(np.array([14.0, 4.0, 7.0]), np.array([10.0, 10.0, 7.0])) == pytest.approx(4.2 / 3)


def test_pinball_at_another_quantile_weighs_the_sides_by_it() -> None:
    assert pinball(np.array([12.0, 8.0]), np.array([10.0, 10.0]), q=0.5) == pytest.approx(1.0)


def test_under_share_is_the_share_of_actuals_strictly_above_the_p90() -> None:
    # 12 > 10 and 30 > 20 are under-provisioned; 10 at a p90 of 10 is covered.
    actual, p90 = np.array([12.0, 10.0, 5.0, 30.0]), np.array([10.0, 10.0, 10.0, 20.0])
    assert under_share(actual, p90) == pytest.approx(2 / 4)


def test_over_provision_share_is_capacity_above_the_actual_over_the_actual_total() -> None:
    # Above the actual: 0, 0, 5, 0 (under-provisioning does not cancel it); actual total 57.
    actual, p90 = np.array([12.0, 10.0, 5.0, 30.0]), np.array([10.0, 10.0, 10.0, 20.0])
    assert over_provision_share(actual, p90) == pytest.approx(5 / 57)
