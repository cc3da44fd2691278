"""The forecaster on the real NAB series, under the protocol the README reports: what issue 20
accepts, so that a change that makes forecasting worse fails here, not in the next README run.
Taxi with one LSTM seed (its margin is wide: every seed beats Holt-Winters by 15%); ELB with the
README's three, whose mean is what holds there (one seed is 0.3% worse than Holt-Winters)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from forecast import backtest
from forecast.series import read_csv

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nab() -> Path:
    folder = Path(os.environ.get("PEAKGUARD_DATA", PROJECT_DIR.parent / "shared" / "data")) / "nab"
    assert (folder / "nyc_taxi.csv").is_file(), f"NAB series missing under {folder}; set PEAKGUARD_DATA (README: Data)"
    return folder


def _figures(path: Path, seeds: tuple[int, ...] = (0,)) -> dict[str, dict[str, float]]:
    """Each model's figures; the LSTM's are the seeds' means."""
    result = backtest.run(read_csv(path), horizon=pd.Timedelta(minutes=15), seeds=seeds, log=lambda line: None)
    models: dict[str, dict[str, float]] = result.to_dict()["models"]
    return models


def test_on_nyc_taxi_the_lstm_beats_holt_winters_by_15_percent_with_an_honest_p90(nab: Path) -> None:
    models = _figures(nab / "nyc_taxi.csv")

    assert models["lstm"]["mase"] <= 0.85 * models["holt_winters"]["mase"]
    assert 0.05 <= models["lstm"]["under_p90_share"] <= 0.15
    assert models["lstm"]["pinball_p90"] < min(models["holt_winters"]["pinball_p90"],
                                               models["seasonal_naive"]["pinball_p90"])  # fmt: skip


def test_on_the_elb_series_the_lstm_is_no_worse_than_holt_winters(nab: Path) -> None:
    models = _figures(nab / "elb_request_count_8c0756.csv", seeds=(0, 1, 2))

    assert models["lstm"]["mase"] <= models["holt_winters"]["mase"]
    assert 0.05 <= models["lstm"]["under_p90_share"] <= 0.15
    assert models["lstm"]["pinball_p90"] < min(models["holt_winters"]["pinball_p90"],
                                               models["seasonal_naive"]["pinball_p90"])  # fmt: skip
    # The published baselines (issue 20, measured with the same protocol): a check on the protocol.
    assert models["holt_winters"]["mase"] == pytest.approx(0.76, abs=0.01)
