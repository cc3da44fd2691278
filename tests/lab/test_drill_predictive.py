"""The drill's predictive variant, below the drill: the history it gives CloudWatch (the surge, daily,
where the compressed clock puts it), what the runbook's own port and forecaster read from it, the
settings it refuses, and how its comparison counts the time short of capacity."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from lab import drill_predictive
from lab.alb import play_ingress_alb, write_request_count
from lab.aws import CREDENTIALS, moto_server
from lab.drill import DrillError, DrillSettings, Timeline
from lab.drill_predictive import DailyPeak, daily_peak
from model_service.load_generator import Phase
from runbooks.ports.request_history import CloudWatchRequestHistory

REGION = "us-west-2"


def _settings(tmp_path: Path, **changes: Any) -> DrillSettings:
    return DrillSettings(data=tmp_path, out=tmp_path / "out", cache=tmp_path / "cache", **changes)


def _timeline(started: float, *, steady: float = 30.0, surge: float = 54.0) -> Timeline:
    timeline = Timeline(started=started)
    timeline.phases = [Phase("steady", steady, 20.0), Phase("surge", surge, 160.0), Phase("after", 60.0, 20.0)]
    return timeline


def test_the_history_repeats_the_surge_daily_where_the_compressed_clock_puts_it(tmp_path: Path) -> None:
    started = dt.datetime(2026, 12, 7, 9, 50, tzinfo=dt.UTC)
    # k = 0.05: a minute of the history's time is 3 s, so 30 s of steady traffic is 10 minutes.
    peak = daily_peak(_settings(tmp_path, time_scale=0.05), _timeline(started.timestamp()), at=started.timestamp())

    assert (peak.night_rps, peak.peak_rps) == (20.0, 160.0)
    assert peak.opens == 10 * 60 and peak.minutes == pytest.approx(18.0)
    for day in range(6):
        before = started - dt.timedelta(days=day)
        assert peak.rate(before + dt.timedelta(minutes=5)) == pytest.approx(20.0, rel=0.05)
        assert peak.rate(before + dt.timedelta(minutes=10)) == pytest.approx(160.0, rel=0.05)
        assert peak.rate(before + dt.timedelta(minutes=25)) == pytest.approx(160.0, rel=0.05)
        assert peak.rate(before + dt.timedelta(minutes=30)) == pytest.approx(20.0, rel=0.05)


def test_the_spread_is_the_same_for_the_same_period_and_differs_between_periods() -> None:
    peak = DailyPeak(night_rps=100.0, peak_rps=100.0, opens=0.0, minutes=0.0, noise=0.05, seed=3)
    starts = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=5 * n) for n in range(288)]
    rates = [peak.rate(t) for t in starts]

    assert rates == [peak.rate(t) for t in starts]
    assert all(95.0 <= r <= 105.0 for r in rates)
    assert len({round(r, 6) for r in rates}) > 250, "a spread, not one offset"
    assert sum(rates) / len(rates) == pytest.approx(100.0, rel=0.01)


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, Any]]:
    with moto_server() as url:
        yield {"endpoint_url": url, "region_name": REGION, **CREDENTIALS}


def test_the_runbook_s_port_and_forecaster_see_the_surge_coming_in_what_the_drill_writes(
    aws: dict[str, Any], tmp_path: Path
) -> None:
    from forecast.predict import predict
    from runbooks.library.predictive_scale import _regular

    cluster = f"peakguard-{uuid.uuid4().hex[:6]}"  # moto keeps one account per process: a cluster of its own
    dimensions = play_ingress_alb(aws, cluster=cluster, namespace="peakguard", ingress="model-service")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    peak = daily_peak(_settings(tmp_path), _timeline(now.timestamp()), at=now.timestamp())
    written = write_request_count(aws, dimensions, peak.rate, days=drill_predictive.HISTORY_DAYS + 1, end=now)
    history = CloudWatchRequestHistory(boto3.client("cloudwatch", **aws), boto3.client("elbv2", **aws),
                                       cluster=cluster, namespace="peakguard", ingress="model-service")  # fmt: skip

    rates = history.rates(now=now, hours=24 * drill_predictive.HISTORY_DAYS)
    values, index = _regular(rates.times, rates.rates, rates.until)
    last_start = rates.until - dt.timedelta(minutes=5)
    steps = int((now + dt.timedelta(minutes=drill_predictive.HORIZON_MINUTES) - last_start) / dt.timedelta(minutes=5))
    ahead = predict(values, index, horizon=steps)

    assert written == 6 * 288 + 1
    assert values[-1] == pytest.approx(20.0, rel=0.06), "the night, now"
    assert ahead.p90 >= 0.9 * 160.0, f"the surge is forecast 15 minutes ahead: {ahead}"


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"fault": "zone"}, "drop --fault"),
        ({"steady_seconds": 31.0}, r"past what a 15-minute forecast sees: at most 30 s of --steady"),
        ({"steady_seconds": 61.0, "time_scale": 0.1}, r"at most 60 s of --steady"),
        ({"steady_seconds": 30.0, "surge_seconds": 29.0}, r"--steady \+ --surge must be at least 60 s at k = 0.05"),
    ],
)
def test_what_the_variant_cannot_do_is_refused_before_any_calibration(
    tmp_path: Path, changes: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(DrillError, match=refusal):
        drill_predictive.check(_settings(tmp_path, **changes))


def test_a_steady_phase_the_forecast_sees_past_is_accepted(tmp_path: Path) -> None:
    drill_predictive.check(_settings(tmp_path, steady_seconds=30.0, surge_seconds=30.0))


def test_time_short_of_capacity_counts_each_sample_until_the_next_within_the_surge() -> None:
    samples = [(0.0, 1, 1), (5.0, 1, 2), (12.0, 2, 2), (20.0, 1, 2), (22.0, 2, 2)]
    # The surge from 10 to 30: short from 10 to 12 and from 20 to 22.
    assert drill_predictive._short(samples, 2, 10.0, 30.0) == 4.0
    assert drill_predictive._short(samples, 1, 10.0, 30.0) == 0.0
    assert drill_predictive._short(samples, 2, 40.0, 50.0) is None, "no sample in it: not measured, never 0"
    assert drill_predictive._ready_at(samples, 12.5) == 2
    assert drill_predictive._ready_at(samples, -1.0) is None


def test_the_cli_refuses_the_variant_with_a_fault_in_a_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "peakguard", "drill", "surge", "--predictive", "--fault", "zone", "--data",
         str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "peakguard drill: --predictive compares when capacity came with and without a forecast: drop --fault"
    )
