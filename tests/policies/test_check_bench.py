"""`peakguard policy bench`'s mechanics (not its figures: those are measured, never asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from policies.check_bench import CheckFailedError, Timing, _run, render
from tests.infra.conftest import PROJECT_DIR


def test_a_check_that_does_not_pass_is_not_timed() -> None:
    with pytest.raises(CheckFailedError, match=r"`peakguard policy check --env nope` exited 2"):
        _run(PROJECT_DIR, "--env", "nope")


def test_the_report_shows_each_median_its_range_and_the_ratio() -> None:
    text = render(Timing("3 stacks, 3 processes", (21.0, 20.0, 23.0)), Timing("3 stacks, 1 process", (9.0, 8.0, 10.0)))

    assert "3 interleaved repetition(s)" in text
    assert "median  21.0 s (min 20.0, max 23.0)" in text
    assert "median   9.0 s (min 8.0, max 10.0)" in text
    assert "one process takes 0.43x the time of three" in text


def test_no_repetitions_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "peakguard", "policy", "bench", "--repeat", "0"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "--repeat must be >= 1" in done.stderr
