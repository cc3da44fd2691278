"""`peakguard bench breaker`'s replay: the same answers through two breaker timings, on a replayed
clock (the served run itself is the bench's, not a test's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_service.breaker_replay import NEW, OLD, BreakerReplaySettings, answers_of, replay
from model_service.load_generator import Request

SLO = 0.44


def _answers(*stretches: tuple[float, float], per_second: int = 60) -> list[tuple[float, float]]:
    """(seconds, latency) stretches, one after the other, as (completion time, latency) answers."""
    answers, now = [], 0.0
    for seconds, latency in stretches:
        for _ in range(int(seconds * per_second)):
            now += 1 / per_second
            answers.append((now, latency))
    return answers


def test_a_burst_shorter_than_the_new_trip_opens_only_the_old_timing() -> None:
    # 3 s of answers over the SLO: the old 10 s window keeps them in its p99 for 10 s, past its 5 s trip.
    answers = _answers((20, 0.3), (3, 0.6), (30, 0.3))

    old, new = replay(answers, OLD, SLO), replay(answers, NEW, SLO)

    assert len(old["opened"]) == 1 and old["opened"][0]["at_s"] == pytest.approx(25.0, abs=0.2), old
    assert new["opened"] == [], new
    assert 4.9 <= new["longest_over_trip_s"] < 10 and old["longest_over_trip_s"] >= 5
    assert new["max_p99_ms"] == pytest.approx(600.0)


def test_slowness_that_outlasts_the_window_opens_both() -> None:
    answers = _answers((20, 0.3), (20, 0.6))

    old, new = replay(answers, OLD, SLO), replay(answers, NEW, SLO)

    assert old["opened"] and new["opened"]
    assert new["opened"][0]["at_s"] == pytest.approx(30.0, abs=0.2), "10 s after the p99 crossed"


def test_answers_are_the_answered_requests_by_completion_with_the_send_lag_taken_off() -> None:
    requests = [
        Request(at=1.0, phase="8x", outcome="answered", status=200, latency=0.5, lag=0.1),
        Request(at=0.5, phase="8x", outcome="answered", status=200, latency=0.2, lag=0.0),
        Request(at=0.6, phase="8x", outcome="shed", status=429, latency=None, lag=0.0),
    ]

    assert answers_of(requests) == [(0.7, 0.2), (1.5, 0.4)]


def test_a_budget_at_or_over_the_slo_is_refused() -> None:
    with pytest.raises(ValueError, match="below the SLO"):
        BreakerReplaySettings(artifacts=Path("m"), latency_budget=0.5, slo=0.44, sustainable_rps=50)
