"""The drill's predictive variant, below the drill: the history it gives CloudWatch (the surge, daily,
where the compressed clock puts it), what the runbook's own port and forecaster read from it, the
settings it refuses, and how its comparison counts the time short of capacity."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from lab import drill_predictive
from lab.alb import play_ingress_alb, write_request_count
from lab.aws import CREDENTIALS, moto_server
from lab.drill import DrillError, DrillSettings, Prepared, Timeline
from lab.drill_comparison import compare, ready_at_moment, render, short_of
from lab.drill_predictive import DailyPeak, PredictiveRun, daily_peak
from model_service.load_generator import Phase, Request
from runbooks.ports.request_history import CloudWatchRequestHistory

REGION = "us-west-2"


def _settings(tmp_path: Path, **changes: Any) -> DrillSettings:
    return DrillSettings(data=tmp_path, out=tmp_path / "out", cache=tmp_path / "cache", **{"max_pods": 4, **changes})


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
    written = write_request_count(aws, dimensions, peak.rate, days=drill_predictive.HISTORY_DAYS, end=now)
    history = CloudWatchRequestHistory(boto3.client("cloudwatch", **aws), boto3.client("elbv2", **aws),
                                       cluster=cluster, namespace="peakguard", ingress="model-service")  # fmt: skip

    rates = history.rates(now=now, hours=24 * 14)  # the runbook's default, the CronJob's
    values, index = _regular(rates.times, rates.rates, rates.until)
    last_start = rates.until - dt.timedelta(minutes=5)
    steps = int((now + dt.timedelta(minutes=drill_predictive.HORIZON_MINUTES) - last_start) / dt.timedelta(minutes=5))
    ahead = predict(values, index, horizon=steps)

    assert written == 15 * 288 + 1
    assert values[-1] == pytest.approx(20.0, rel=0.06), "the night, now"
    assert ahead.p90 >= 0.9 * 160.0, f"the surge is forecast 15 minutes ahead: {ahead}"


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"fault": "zone"}, "drop --fault"),
        ({"autopilot": False}, "drop --no-autopilot"),
        ({"max_pods": 3}, r"needs --max-pods 4 or more \(got 3\)"),
        ({"steady_seconds": 31.0}, r"past what a 15-minute forecast sees: at most 30 s of --steady"),
        ({"steady_seconds": 61.0, "time_scale": 0.1}, r"at most 60 s of --steady"),
        ({"steady_seconds": 30.0, "surge_seconds": 29.0}, r"--steady \+ --surge must be at least 60 s at k = 0.05"),
        ({"steady_seconds": 60.0, "surge_seconds": 55.0, "time_scale": 0.1}, r"at least 120 s at k = 0.1"),
    ],
)
def test_what_the_variant_cannot_do_is_refused_before_any_calibration(
    tmp_path: Path, changes: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(DrillError, match=refusal):
        drill_predictive.check(_settings(tmp_path, **changes))


def test_the_default_steady_phase_is_as_far_ahead_as_the_forecast_sees_and_is_accepted(tmp_path: Path) -> None:
    assert drill_predictive.default_steady(0.05) == pytest.approx(30.0)
    assert drill_predictive.default_steady(0.1) == pytest.approx(60.0)
    drill_predictive.check(_settings(tmp_path, steady_seconds=30.0, surge_seconds=30.0))


def test_time_short_of_capacity_counts_each_sample_until_the_next_within_the_surge() -> None:
    samples = [(t, 1 if t < 12 or 20 <= t < 22 else 2, 1) for t in (x / 2 for x in range(0, 61))]
    # The surge from 10 to 30: short from 10 to 12 and from 20 to 22; every second covered.
    assert short_of(samples, 2, 10.0, 30.0) == (4.0, 0.0)
    assert short_of(samples, 1, 10.0, 30.0) == (0.0, 0.0)
    assert ready_at_moment(samples, 12.2) == 2
    assert ready_at_moment(samples, -1.0) is None


def test_a_gap_between_samples_is_unmeasured_never_inherited_from_the_last_one() -> None:
    # Sampled up to 11, then nothing until 25: a sample stands for a second at most.
    samples = [(10.0, 1, 1), (10.5, 1, 1), (11.0, 1, 1), (25.0, 2, 2), (25.5, 2, 2)]
    short, unmeasured = short_of(samples, 2, 10.0, 26.0)
    assert (short, unmeasured) == (2.0, 13.0)
    # The surge began before the first sample: that stretch is unmeasured, not "not short".
    assert short_of([(15.0, 1, 1)], 2, 10.0, 20.0) == (1.0, 9.0)
    assert ready_at_moment(samples, 20.0) is None, "no sample within a second of it"
    assert short_of([], 2, 10.0, 20.0) == (0.0, 10.0)


def _arm(started: float, ready_from: float, *, runbooks: list[dict[str, Any]]) -> Timeline:
    """A finished arm: steady 20 s, surge 20 s from started + 20; `ready_from` is when the third
    replica was Ready; one request a second, answered in 50 ms before it and 500 ms after."""
    timeline = _timeline(started, steady=20.0, surge=20.0)
    timeline.capacity = [(started + x / 2, 3 if started + x / 2 >= ready_from else 1, 1) for x in range(0, 121)]
    for second in range(60):
        at = started + second
        phase = "steady" if second < 20 else "surge" if second < 40 else "after"
        latency = 0.05 if at >= ready_from else 0.5
        timeline.requests.append(Request(float(second), phase, "answered", 200, latency, 0.0))
    timeline.runbooks = runbooks
    timeline.history = {"night_rps": 20.0}
    return timeline


def _journal(path: Path, basis: dict[str, Any]) -> str:
    path.write_text(json.dumps({"event": "run_started", "plan": {"basis": basis}}) + "\n" + '{"event": "run_fin')
    return str(path)


def test_the_comparison_says_when_capacity_came_in_each_arm_and_what_clients_saw(tmp_path: Path) -> None:
    started = 1_000_000.0
    basis = {"rpsNow": 20.0, "needNow": 2, "needAhead": 8, "minReplicas": 3, "cappedByMax": True,
             "forecastP90Rps": 150.0, "forecastAt": "2026-12-07T10:05:00", "model": "holt_winters"}  # fmt: skip
    cycle = {"runbook": "predictive-scale", "exit": 0, "started": started + 1, "ended": started + 5,
             "journal": _journal(tmp_path / "journal.jsonl", basis)}  # fmt: skip
    paged = {"runbook": "emergency-stop", "exit": 0, "started": started + 28, "ended": started + 33}
    result = PredictiveRun(
        Prepared([], tmp_path, "", {}),
        {"reactive": _arm(started, started + 33, runbooks=[paged]),
         "predictive": _arm(started, started + 8, runbooks=[cycle])},
    )  # fmt: skip

    numbers = compare(result, _settings(tmp_path, time_scale=0.05))
    text = render(numbers)

    reactive, predictive = numbers["arms"]["reactive"], numbers["arms"]["predictive"]
    assert numbers["valid"] is True, numbers["invalid_because"]
    assert numbers["full_capacity_replicas"] == 3
    assert (predictive["full_capacity_lead_s"], predictive["full_capacity_lead_minutes"]) == (12.0, 4.0)
    assert (reactive["full_capacity_lead_s"], reactive["full_capacity_lead_minutes"]) == (-13.0, -4.3)
    assert (predictive["ready_replicas_at_surge"], reactive["ready_replicas_at_surge"]) == (3, 1)
    assert (predictive["short_of_full_capacity_in_surge_s"], reactive["short_of_full_capacity_in_surge_s"]) == (0, 13)
    assert predictive["early_surge"]["p99_ms"] == 50.0 and reactive["early_surge"]["p99_ms"] == 500.0
    assert predictive["early_surge"]["requests"] == reactive["early_surge"]["requests"] == 10
    assert numbers["predictive_scale"]["basis"]["minReplicas"] == 3, "read from a journal whose last line was cut"
    assert "3 Ready replicas 12 s before the surge (4 min of the history's time)" in text
    assert "3 Ready replicas 13 s after the surge began (4.3 min)" in text
    assert "NOT A VALID" not in text and "One machine is not a cluster" in text
    assert text.count("first alert none") == 2
    result.arms["predictive"].alerts["ModelServiceBreakerOpen"] = started + 18.0
    assert "first alert 2 s before it" in render(compare(result, _settings(tmp_path)))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("cycle-failed", "predictive-scale did not run to exit 0"),
        ("night-asks-for-all", "the rate now already asked for all 3 replicas"),
        ("rebuilt", "reactive: ran rebuild, which the comparison excludes"),
        ("no-history", "predictive: no history: DrillError: no Ingress"),
        ("not-sampled", "reactive: no capacity was sampled"),
    ],
)
def test_a_comparison_that_does_not_hold_says_why(tmp_path: Path, change: str, why: str) -> None:
    started = 1_000_000.0
    basis = {"needNow": 3 if change == "night-asks-for-all" else 2, "minReplicas": 3}
    journal = _journal(tmp_path / "journal.jsonl", basis)
    cycle = {"runbook": "predictive-scale", "exit": 1 if change == "cycle-failed" else 0, "started": started,
             "ended": started + 4, "journal": journal, "output": "boom"}  # fmt: skip
    reactive_runbooks = [{"runbook": "rebuild", "exit": 0, "started": started + 45}] if change == "rebuilt" else []
    arms = {"reactive": _arm(started, started + 33, runbooks=reactive_runbooks),
            "predictive": _arm(started, started + 8, runbooks=[cycle])}  # fmt: skip
    if change == "no-history":
        arms["predictive"].history = {"error": "DrillError: no Ingress"}
    if change == "not-sampled":
        arms["reactive"].capacity = []

    numbers = compare(PredictiveRun(Prepared([], tmp_path, "", {}), arms), _settings(tmp_path))

    assert numbers["valid"] is False
    assert any(why in reason for reason in numbers["invalid_because"]), numbers["invalid_because"]
    assert "NOT A VALID COMPARISON" in render(numbers)


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
