"""The recordings' draws (lab/diagnosis_recordings.plan): reproducible per (cause, seed), within the
ranges the module states, different across seeds."""

from __future__ import annotations

import pytest

from lab.diagnosis_recordings import MAX_RPS, RECORDED, plan

LAYERS = ["block0", "block1", "head"]


@pytest.mark.parametrize("cause", RECORDED)
def test_a_plan_is_reproducible_and_within_its_stated_ranges(cause: str) -> None:
    runs = [plan(cause, seed, sustainable_rps=50.0, slo_seconds=0.4, layers=LAYERS) for seed in range(5)]

    assert runs[0] == plan(cause, 0, sustainable_rps=50.0, slo_seconds=0.4, layers=LAYERS)
    assert len({run.seconds for run in runs}) == 5, "each seed draws its own run"
    for run in runs:
        assert 75 <= run.seconds <= 95 and run.replicas in (2, 3) and 15 <= run.rps <= 30
        if cause == "none":
            assert run.fault_at == run.seconds and run.fault_rps == run.rps
        elif cause == "cold-replica":
            assert 0.1 * run.seconds <= run.fault_at <= 0.2 * run.seconds
            assert run.cold_factor is not None and 3 <= run.cold_factor <= 6
        else:
            assert 0.3 * run.seconds <= run.fault_at <= 0.5 * run.seconds
        if cause == "overload":
            assert 150 <= run.fault_rps <= MAX_RPS
        if cause == "slow-layer":
            assert run.layer in LAYERS and run.delay_seconds is not None and 0.04 <= run.delay_seconds <= 0.2


def test_an_unknown_cause_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="not one of none, overload"):
        plan("meteor", 0, sustainable_rps=50.0, slo_seconds=0.4, layers=LAYERS)
