"""`peakguard forecast backtest` as a user runs it: a real process on a small synthetic CSV, its exit
statuses (0 done, 2 invalid input, 3 an output that cannot be written) and what it says."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _csv(path: Path, *, days: int = 6, extra_lines: dict[int, str] | None = None) -> Path:
    """About `days` days of 30-minute points: a daily sine that grows a little every step (so no
    two days are copies, which MASE's scale needs). `extra_lines` puts a row at a file line number."""
    lines = ["timestamp,value"]
    for i in range(days * 48):
        at = datetime(2024, 3, 1) + timedelta(minutes=30 * i)
        lines.append(f"{at.isoformat()},{100 + 50 * math.sin(2 * math.pi * i / 48) + 0.05 * i:.4f}")
    for line, row in sorted((extra_lines or {}).items()):
        lines.insert(line - 1, row)
    path.write_text("\n".join(lines) + "\n")
    return path


def _backtest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peakguard", "forecast", "backtest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_baselines_are_judged_and_each_models_figures_written(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "rate.csv")
    done = _backtest(tmp_path, "--csv", str(csv), "--model", "holt_winters", "--model", "seasonal_naive",
                     "--json", str(tmp_path / "report.json"))  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["models"]) == {"holt_winters", "seasonal_naive"}
    for figures in report["models"].values():
        assert {"mase", "smape", "pinball_p90", "under_p90_share"} <= set(figures)
        assert all(math.isfinite(figures[k]) for k in ("mase", "smape", "pinball_p90", "under_p90_share"))
    assert report["protocol"]["refit"] is False
    assert report["protocol"]["horizon_steps"] == 1  # 15 minutes at 30-minute steps
    assert report["series"]["points"] == 6 * 48
    # Each day is yesterday plus the same growth: the seasonal naive is MASE's yardstick, exactly 1.
    assert report["models"]["seasonal_naive"]["mase"] == pytest.approx(1.0)
    assert report["models"]["holt_winters"]["mase"] < report["models"]["seasonal_naive"]["mase"]
    assert "holt_winters" in done.stdout and "seasonal_naive" in done.stdout


def test_the_plot_is_written_as_a_png(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "rate.csv")
    done = _backtest(tmp_path, "--csv", str(csv), "--model", "seasonal_naive", "--plot", str(tmp_path / "out.png"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_lstm_trains_and_is_judged_on_a_small_series(tmp_path: Path) -> None:
    # The one LSTM run of these tests: a few seconds on 6 days of 30-minute points.
    csv = _csv(tmp_path / "rate.csv")
    done = _backtest(tmp_path, "--csv", str(csv), "--model", "lstm", "--seed", "0",
                     "--json", str(tmp_path / "report.json"))  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "lstm (seed 0): MASE" in done.stdout
    figures = json.loads((tmp_path / "report.json").read_text())["models"]["lstm"]
    assert math.isfinite(figures["mase"]) and 0 <= figures["under_p90_share"] <= 1


@pytest.mark.parametrize("horizon", ["banana", "0m"])
def test_a_bad_horizon_is_one_line_naming_it_and_exit_2(tmp_path: Path, horizon: str) -> None:
    done = _backtest(tmp_path, "--csv", str(_csv(tmp_path / "rate.csv")), "--horizon", horizon)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert f"--horizon {horizon!r}" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_file_is_named_and_exit_2(tmp_path: Path) -> None:
    done = _backtest(tmp_path, "--csv", str(tmp_path / "nowhere.csv"))

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert str(tmp_path / "nowhere.csv") in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("event", "says"),
    [
        pytest.param("black-friday", "expected START/END, two ISO times", id="no-window"),
        pytest.param("2024-03-02T00:00/tomorrow", "expected START/END, two ISO times", id="not-a-time"),
        pytest.param("2024-03-03T00:00/2024-03-02T00:00", "the end must come after the start", id="backwards"),
    ],
)
def test_a_bad_event_is_one_line_naming_it_and_exit_2(tmp_path: Path, event: str, says: str) -> None:
    done = _backtest(tmp_path, "--csv", str(_csv(tmp_path / "rate.csv")), "--event", event)

    assert done.returncode == 2
    assert f"--event {event!r}: {says}" in done.stderr and "Traceback" not in done.stderr


def test_a_json_path_that_cannot_be_written_is_exit_3_without_a_traceback(tmp_path: Path) -> None:
    (blocker := tmp_path / "not-a-folder").write_text("a regular file where a folder should be\n")
    done = _backtest(tmp_path, "--csv", str(_csv(tmp_path / "rate.csv")), "--model", "seasonal_naive",
                     "--json", str(blocker / "report.json"))  # fmt: skip

    assert done.returncode == 3
    assert "cannot write" in done.stderr and str(blocker) in done.stderr
    assert "Traceback" not in done.stderr
    assert blocker.read_text() == "a regular file where a folder should be\n"


def test_bad_rows_are_skipped_and_named_on_stdout(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "rate.csv", extra_lines={41: "2024-03-01T20:10:00,lots", 90: "not-a-time,12"})
    done = _backtest(tmp_path, "--csv", str(csv), "--model", "seasonal_naive")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 bad rows skipped" in done.stdout
    assert "skipped line 41: value 'lots' is not a number" in done.stdout
    assert "skipped line 90: timestamp 'not-a-time' is not a date and time" in done.stdout


def test_an_event_with_a_time_zone_is_read_as_utc_like_the_series() -> None:
    from forecast.cli import parse_event

    start, end = parse_event("2024-03-02T01:00+01:00/2024-03-03T00:00+00:00")

    assert start == pd.Timestamp("2024-03-02T00:00") and end == pd.Timestamp("2024-03-03T00:00")
    assert start.tzinfo is None and end.tzinfo is None
