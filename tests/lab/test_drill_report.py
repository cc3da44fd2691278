"""The drill's report from a timeline written here: each figure from what was recorded, None where
nothing was, and the lines a person reads. (A real drill's timeline: test_drill.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lab.drill import DrillSettings, Timeline
from lab.drill_report import render, report
from model_service.load_generator import Phase, Request

STARTED = 1_800_000_000.0


def _timeline(surge_latency: float, *, fault_at: float | None = None, ready: tuple[int, int] = (4, 2)) -> Timeline:
    calibration = {"slo_seconds": 0.3, "sustainable_rps": 10.0, "unloaded_p99_seconds": 0.1,
                   "latency_budget_seconds": 0.2}  # fmt: skip
    timeline = Timeline(started=STARTED, calibration=calibration)
    timeline.phases = [Phase("steady", 10, 5), Phase("surge", 10, 80), Phase("after", 10, 5)]
    for n in range(50):
        timeline.requests.append(Request(at=n * 0.2, phase="steady", outcome="answered", status=200, latency=0.05,
                                         lag=0.001, served_by="model"))  # fmt: skip
    for n in range(800):
        failed = n % 100 == 0
        timeline.requests.append(Request(at=10 + n * 0.0125, phase="surge", outcome="failed" if failed else "answered",
                                         status=0 if failed else 200, latency=None if failed else surge_latency,
                                         lag=0.002, served_by="model"))  # fmt: skip
    for n in range(50):
        timeline.requests.append(Request(at=20 + n * 0.2, phase="after", outcome="answered", status=200, latency=0.06,
                                         lag=0.001, served_by="model"))  # fmt: skip
    timeline.alerts = {"ModelServiceP99LatencyHigh": STARTED + 17.0}
    if fault_at is not None:
        timeline.fault = {"at": STARTED + fault_at, "ready_before": ready[0], "ready_after": ready[1]}
    return timeline


def _settings(tmp_path: Path, **changes: object) -> DrillSettings:
    return DrillSettings(data=tmp_path, out=tmp_path / "out", cache=tmp_path / "cache", **changes)  # type: ignore[arg-type]


def test_without_the_autopilot_the_report_shows_the_collapse_and_that_nobody_acted(tmp_path: Path) -> None:
    settings = _settings(tmp_path, autopilot=False)

    numbers = report(_timeline(surge_latency=4.0), settings)
    text = render(numbers)

    assert numbers["p99_ms"]["during"] == pytest.approx(4000.0)
    assert numbers["p99_ms"]["before"] == pytest.approx(50.0)
    assert numbers["requests_failed"] == 8 and numbers["answered_plus_shed_equals_sent"] is False
    assert numbers["time_to_detect_s"] == 7.0
    assert numbers["time_to_mitigate_s"] is None and numbers["runbooks"] == []  # nobody acted: None, never 0
    assert "no autopilot: alerts fired" in text and "nobody acted" in text
    assert "8 failed" in text


def test_a_lost_zone_is_weighed_against_the_headroom_rule(tmp_path: Path) -> None:
    settings = _settings(tmp_path, fault="zone")

    numbers = report(_timeline(surge_latency=0.5, fault_at=15.0, ready=(4, 2)), settings)
    effect = numbers["fault_effect"]

    assert (effect["ready_before"], effect["ready_after"], effect["at_s"]) == (4, 2, 15.0)
    assert effect["within_slo_after"] is False  # 500 ms against a 300 ms SLO
    assert effect["rest_of_surge"]["answered"] == pytest.approx(396, abs=2)
    # Half the fleet gone: 1.3 x 0.5 = 65% of the expected peak left, 35% short.
    assert effect["lost_share"] == 0.5
    assert effect["left_of_expected_peak"] == pytest.approx(0.65)
    assert effect["missing_of_expected_peak"] == pytest.approx(0.35)
    assert "35% short of it" in render(numbers)


def test_a_zone_the_headroom_covers_is_not_called_short(tmp_path: Path) -> None:
    numbers = report(_timeline(surge_latency=0.2, fault_at=15.0, ready=(6, 5)), _settings(tmp_path, fault="zone"))

    assert numbers["fault_effect"]["within_slo_after"] is True
    assert numbers["fault_effect"]["missing_of_expected_peak"] == 0.0
    assert "short of it" not in render(numbers)


def test_a_slowed_pod_s_share_of_the_requests_is_set_beside_an_even_one(tmp_path: Path) -> None:
    timeline = _timeline(surge_latency=0.2, fault_at=15.0, ready=(3, 3))
    timeline.fault |= {"pod": "b", "served_before": {"a": 100, "b": 100, "c": 100},
                       "served_after": {"a": 500, "b": 120, "c": 480}}  # fmt: skip

    numbers = report(timeline, _settings(tmp_path, fault="slow-layer"))

    assert numbers["fault_effect"]["slowed_share"] == pytest.approx(20 / 800, abs=0.001)
    assert numbers["fault_effect"]["even_share"] == pytest.approx(0.333, abs=0.001)
    assert "the slowed pod b got 2% of the requests" in render(numbers)
    assert "lost_share" not in numbers["fault_effect"]


def test_no_fault_no_fault_line(tmp_path: Path) -> None:
    numbers = report(_timeline(surge_latency=0.2), _settings(tmp_path))
    assert numbers["fault_effect"] is None
    assert "fault" not in render(numbers)


def test_a_generator_behind_the_one_lag_bar_is_said_and_one_within_it_is_not(tmp_path: Path) -> None:
    within = report(_timeline(surge_latency=0.2), _settings(tmp_path))
    assert within["generator_behind"] is False  # lag 1-2 ms
    assert "fell behind" not in render(within)

    late = _timeline(surge_latency=0.2)
    late.requests = [dataclasses.replace(r, lag=0.2) if r.phase == "surge" else r for r in late.requests]
    behind = report(late, _settings(tmp_path))

    assert behind["generator_behind"] is True
    assert "send lag p99 200 ms, over the 5 ms bar" in render(behind)


def test_rolling_upgrade_is_judged_on_the_requests_sent_while_it_ran(tmp_path: Path) -> None:
    timeline = _timeline(surge_latency=0.2)
    # after: a request every 0.2 s from 20 s; the upgrade ran from 22 s to 26 s, and one slow answer
    # (over the 300 ms SLO) fell in it.
    timeline.runbooks.append({"runbook": "rolling-upgrade", "started": STARTED + 22.0, "ended": STARTED + 26.0,
                              "exit": 0, "journal": None})  # fmt: skip
    slow = next(n for n, r in enumerate(timeline.requests) if r.phase == "after" and r.at >= 24.0)
    timeline.requests[slow] = Request(at=timeline.requests[slow].at, phase="after", outcome="answered", status=200,
                                      latency=0.9, lag=0.001, served_by="model")  # fmt: skip
    timeline.upgrade = {"before": {"blue": 2}, "after": {"green": 2}}

    numbers = report(timeline, _settings(tmp_path))

    upgrade, during = numbers["upgrade"], numbers["windows"]["during_upgrade"]
    assert (upgrade["exit"], upgrade["seconds"]) == (0, 4.0)
    assert (upgrade["nodes_before"], upgrade["nodes_after"]) == ({"blue": 2}, {"green": 2})
    assert during["requests"] == 21 and during["failed"] == 0
    assert during["p99_ms"] > 300 and upgrade["within_slo"] is False
    assert numbers["p99_ms"]["during_upgrade"] == during["p99_ms"]
    assert "rolling-upgrade: exit 0 in 4.0 s" in render(numbers) and "NOT within the SLO" in render(numbers)


def test_no_rolling_upgrade_no_upgrade_figures(tmp_path: Path) -> None:
    numbers = report(_timeline(surge_latency=0.2), _settings(tmp_path))

    assert numbers["upgrade"] is None and "during_upgrade" not in numbers["windows"]
    assert "rolling-upgrade" not in render(numbers)


def test_a_capped_surge_says_so_and_an_unfinished_upgrade_is_not_given_an_exit(tmp_path: Path) -> None:
    timeline = _timeline(surge_latency=0.2)
    timeline.calibration["surge_capped_from_rps"] = 456.0
    timeline.runbooks.append({"runbook": "rolling-upgrade", "started": STARTED + 22.0})

    text = render(report(timeline, _settings(tmp_path)))

    assert "the surge capped from 456 rps" in text
    assert "rolling-upgrade: unfinished;" in text
