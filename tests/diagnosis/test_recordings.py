"""diagnose on the lab's recordings (tests/diagnosis/recordings, made by `peakguard drill record`,
lab/diagnosis_recordings.py): in every recording with a fault the injected cause ranks first, in
every no-fault one no cause is claimed, and a recording stripped of what a cause's check needs is
inconclusive, not guessed."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from diagnosis.causes import diagnose
from diagnosis.series import Recording

FOLDER = Path(__file__).parent / "recordings"
RECORDINGS = sorted(FOLDER.glob("*.json.gz"))
CAUSES = ("overload", "cold-replica", "slow-layer", "node-not-ready")


def test_there_are_at_least_five_recordings_of_each_cause_and_of_no_fault() -> None:
    counts = Counter(Recording.read(path).notes["cause"] for path in RECORDINGS)

    assert all(counts[cause] >= 5 for cause in (*CAUSES, "none")), counts


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.name.removesuffix(".json.gz") for p in RECORDINGS])
def test_the_injected_cause_ranks_first_and_none_is_claimed_without_one(path: Path) -> None:
    recording = Recording.read(path)
    injected = recording.notes["cause"]

    result = diagnose(recording)

    if injected == "none":
        assert result.verdict == "healthy", (result.reason, result.findings)
        return
    assert result.verdict == "cause" and result.findings[0].cause == injected, (result.reason, result.findings)
    # ...and where the fault struck: the pod, the layer, the node the recording says it struck.
    struck, figures = recording.notes["struck"], result.findings[0].figures
    for key in ("pod", "layer", "node"):
        if key in struck and key in figures:
            assert figures[key] == struck[key], (key, struck, figures)
    if injected == "node-not-ready":
        assert struck["pod"] in figures["pods"], (struck, figures)


@pytest.mark.parametrize("cause", ["slow-layer", "cold-replica"])
def test_without_layer_times_a_layer_cause_is_not_guessed(cause: str) -> None:
    path = next(p for p in RECORDINGS if p.name.startswith(f"{cause}-"))
    recording = Recording.read(path)
    blind = dataclasses.replace(recording, series={k: v for k, v in recording.series.items()
                                                   if k not in ("layer_sum", "layer_count")})  # fmt: skip

    result = diagnose(blind)

    assert result.verdict != "cause" or result.findings[0].cause not in ("slow-layer", "cold-replica")
    assert result.verdict == "inconclusive" and "layer_sum" in result.reason, result.reason
