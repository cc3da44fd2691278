"""A shortened incident drill, end to end on the lab: seconds of steady load, a surge, the cluster's
alert rules in a real Prometheus paging, emergency-stop run as the on-call runs it, verified rather
than rolled back, and nothing lost (every request answered or deliberately shed). It runs with
`--fault bad-step`: rebuild's first attempt fails a step and must roll back, timed, to a fleet its
health gate verifies; the second must succeed. Then rolling-upgrade moves the full pool's nodes to
the next generation under the steady load, losing nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from diagnosis.series import Recording
from lab.drill import DrillSettings, run
from lab.drill_report import plot, render, report, write_json
from tests.infra.conftest import PROJECT_DIR
from tests.model_service.conftest import write_tiny_artifacts

FULL = {"hidden": 256, "attention_dim": 256, "heads": 4, "layers": 4, "intermediate": 1024, "max_positions": 64}
DATA = Path(os.environ.get("PEAKGUARD_DATA", PROJECT_DIR.parent / "shared" / "data"))


def _short_drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **timing: Any) -> DrillSettings:
    """A CI-sized drill's settings, run from the checkout, serving models made for it: a full model
    big enough that its latency is compute, not scheduling jitter (a tiny one's p99 of ~20 ms moved
    the SLO run to run) and slow enough that 8x of what it sustains (about 10 requests/s here) is
    within what the generator offers; the light model stays tiny, so degrading helps."""
    monkeypatch.chdir(PROJECT_DIR)
    write_tiny_artifacts(tmp_path / "models", full=FULL)
    return DrillSettings(data=DATA, out=tmp_path / "out", cache=tmp_path / "cache", artifacts=tmp_path / "models",
                         **{"after_seconds": 5, "calibration_seconds": 3, "max_surge_rps": 300, **timing})  # fmt: skip


@pytest.mark.slow
@pytest.mark.alone  # it measures what this machine sustains, then loads every core: nothing else may run
@pytest.mark.timeout(600)
def test_a_short_drill_pages_mitigates_rolls_back_a_bad_step_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _short_drill(tmp_path, monkeypatch, steady_seconds=8, surge_seconds=25, after_max_seconds=240,
                            max_pods=3, fault="bad-step")  # fmt: skip

    timeline = run(settings, log=print)
    numbers = report(timeline, settings)
    write_json(numbers, tmp_path / "report.json")
    plot(timeline, numbers, tmp_path / "plot.png")
    print(render(numbers))

    # Paged by the cluster's own rules during the surge, not before it.
    assert numbers["time_to_detect_s"] is not None, numbers["first_alerts"]
    assert 0 <= numbers["time_to_detect_s"] <= settings.surge_seconds
    # emergency-stop verified the recovery rather than rolling back.
    (stop,) = [entry for entry in numbers["runbooks"] if entry["runbook"] == "emergency-stop"]
    assert stop["exit"] == 0, stop
    assert numbers["mitigation_status"] == "succeeded"
    assert numbers["time_to_mitigate_s"] is not None
    assert set(numbers["mitigation_stages_s"]) == {"decide", "capacity", "mode", "verify"}
    # Nothing lost: every request was answered or deliberately shed (429/503 with Retry-After).
    assert numbers["requests_failed"] == 0, (numbers["failed_by_status"], numbers["balancer_errors"])
    assert numbers["answered_plus_shed_equals_sent"]
    assert numbers["requests_total"] > 0
    # Detected within the rule's own bound: k x (for + range) + one evaluation.
    # (+2 s: the autopilot polls Prometheus every second, and the surge's first second ramps up.)
    assert numbers["time_to_detect_s"] <= numbers["detect_bound_s"] + 2, numbers["first_alerts"]
    # Rebuild's bad step rolled back within 30 s to a fleet verified healthy; the second rebuild
    # took the fleet back to normal mode.
    assert [(entry["runbook"], entry["exit"]) for entry in numbers["runbooks"]] == [
        ("emergency-stop", 0), ("rebuild", 1), ("rebuild", 0), ("rolling-upgrade", 0)
    ]  # fmt: skip
    (rollback,) = numbers["rollbacks"]
    assert rollback["runbook"] == "rebuild" and rollback["status"] == "rolled-back", rollback
    assert rollback["healthy_after"] is True, rollback
    # Within 30 s, unless the health gate's 100 answers take longer at the after phase's rate (a slow
    # calibration on a busy machine): then within the time those answers take, and a margin.
    after_rps = numbers["phases"][2]["offered_rps"]
    assert numbers["rollback_s"] is not None, rollback
    assert numbers["rollback_s"] <= max(30.0, 100 / after_rps + 10), (rollback, after_rps)
    # Then every node of the full pool moved to the next generation, under steady load, nothing lost.
    upgrade = numbers["upgrade"]
    assert upgrade["nodes_before"] == {"blue": 2} and upgrade["nodes_after"] == {"green": 2}, upgrade
    during = numbers["windows"]["during_upgrade"]
    assert during["requests"] > 0 and during["failed"] == 0, during
    # The files a person reads afterwards.
    written = json.loads((tmp_path / "report.json").read_text())
    assert {"time_to_detect_s", "time_to_mitigate_s", "p50_ms", "p99_ms", "requests_total", "requests_failed",
            "requests_shed", "runbooks", "timeline", "recording"} <= set(written)  # fmt: skip
    # What `peakguard diagnose --from-drill` reads: the service's per-pod series and kube-state-metrics'.
    recorded = Recording.read(tmp_path / "report.json")
    for name in ("responses", "stage_sum", "layer_sum", "node_ready", "pod_node", "pod_created"):
        assert recorded.has(name), (name, sorted(recorded.series))
    assert (tmp_path / "plot.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.alone  # like the drill above: calibrated to this machine, then every core loaded
@pytest.mark.timeout(600)
def test_the_predictive_variant_has_capacity_ready_before_the_daily_peak_and_reactive_scaling_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lab import drill_comparison, drill_predictive

    # 25 s of steady traffic: the surge is 8.3 minutes of the history's time away (k = 0.05), inside
    # the forecast's 15, and lasts past its period (40 s: 13.3 minutes); the CronJob's cycle has
    # seconds to start the replicas before it. Three replicas at most: the night's rate with the 30%
    # headroom already asks for two, so only the forecast asks for the third.
    settings = _short_drill(tmp_path, monkeypatch, steady_seconds=25, surge_seconds=40, after_max_seconds=120,
                            max_pods=4)  # fmt: skip

    result = drill_predictive.run(settings, log=print)
    numbers = drill_comparison.compare(result, settings)
    drill_comparison.plot(result, numbers, tmp_path / "predictive.png")
    print(drill_comparison.render(numbers))

    # The CronJob's cycle forecast the daily peak and raised the HPA minimum to the lab's most.
    cycle = numbers["predictive_scale"]
    assert cycle is not None and cycle["exit"] == 0, cycle
    basis = cycle["basis"]
    surge_rps = result.arms["predictive"].phases[1].rps
    assert basis["forecastP90Rps"] >= 0.9 * surge_rps, basis
    assert basis["minReplicas"] == settings.max_pods - 1 <= basis["needAhead"], basis
    assert basis["needNow"] < basis["minReplicas"], "the forecast, not the rate now, asked for the most"
    predictive, reactive = numbers["arms"]["predictive"], numbers["arms"]["reactive"]
    # Forecast: every replica Ready before the surge began; reactive: one as it began, the rest after.
    assert predictive["ready_replicas_at_surge"] == settings.max_pods - 1, predictive
    assert predictive["full_capacity_lead_s"] > 0 and predictive["short_of_full_capacity_in_surge_s"] == 0, predictive
    assert reactive["ready_replicas_at_surge"] == 1, reactive
    assert reactive["full_capacity_lead_s"] is None or reactive["full_capacity_lead_s"] < 0, reactive
    assert reactive["short_of_full_capacity_in_surge_s"] > 0, reactive
    assert numbers["valid"] is True, numbers["invalid_because"]  # among them: no runbook beyond the arm's own
    # Nothing lost in either.
    for arm in drill_predictive.ARMS:
        whole = report(result.arms[arm], settings)
        assert whole["requests_failed"] == 0, (arm, whole["failed_by_status"], whole["balancer_errors"])
        early = numbers["arms"][arm]["early_surge"]
        assert early["failed"] == 0 and early["requests"] > 0, (arm, early)
    assert (tmp_path / "predictive.png").stat().st_size > 10_000
