"""How long PR CI's offline policy check takes: the three stacks as three processes (one per stack,
as a matrix job runs them) against the three in one process (`policy check --all`), side by side.

The two are interleaved, repetition by repetition, so a noisy machine slows both alike; each
figure is the median of the repetitions, with min-max. A run whose check did not pass is not
timed: the figure would be the time to fail.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.config import ENVIRONMENTS

__all__ = ["Timing", "measure", "render"]


@dataclass(frozen=True)
class Timing:
    label: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


class CheckFailedError(RuntimeError):
    """A check did not pass, so its time says nothing about the check's speed."""


def _run(project_dir: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 (our own command, fixed arguments)
        [sys.executable, "-m", "peakguard", "policy", "check", *args],
        cwd=project_dir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        command = f"peakguard policy check {' '.join(args)}"
        raise CheckFailedError(f"`{command}` exited {done.returncode}: {done.stderr[-500:]}")
    return seconds


def measure(project_dir: Path, *, repeat: int) -> tuple[Timing, Timing]:
    """(three processes, one process) over `repeat` interleaved repetitions."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    apart: list[float] = []
    together: list[float] = []
    for _ in range(repeat):
        apart.append(sum(_run(project_dir, "--env", env) for env in ENVIRONMENTS))
        together.append(_run(project_dir, "--all"))
    return Timing("3 stacks, 3 processes", tuple(apart)), Timing("3 stacks, 1 process (--all)", tuple(together))


def render(apart: Timing, together: Timing) -> str:
    def line(timing: Timing) -> str:
        low, high = min(timing.seconds), max(timing.seconds)
        return f"  {timing.label:<28} median {timing.median:5.1f} s (min {low:.1f}, max {high:.1f})"

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return "\n".join(
        [
            f"offline policy check, {len(apart.seconds)} interleaved repetition(s); "
            f"{os.cpu_count()} CPUs, load average {load} at the end",
            line(apart),
            line(together),
            f"  one process takes {together.median / apart.median:.2f}x the time of three",
        ]
    )
