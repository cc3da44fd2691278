"""Latency and lateness as HDR histograms (HdrHistogram, the maintained Python port): each worker
records every sample, the coordinator adds the workers' histograms, and the percentiles of the sum
are those of one histogram of every sample (never percentiles of percentiles).

Values are microseconds from 1 us to one hour at 3 significant digits: a value is kept within 0.1%.
Histograms travel as HdrHistogram's own compressed, base64 encoding."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped, unused-ignore]

__all__ = ["DIGITS", "HIGHEST_US", "PERCENTILES", "decode", "encode", "merged", "of_seconds", "summary_ms"]

HIGHEST_US = 3_600_000_000
"""One hour: no request is waited for that long (the generator's timeout is far below it)."""
DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _new() -> Any:
    return HdrHistogram(1, HIGHEST_US, DIGITS)


def of_seconds(values: Iterable[float]) -> Any:
    """One histogram of `values` (seconds); a value below 1 us counts as 1 us."""
    histogram = _new()
    for value in values:
        histogram.record_value(min(HIGHEST_US, max(1, round(value * 1_000_000))))
    return histogram


def encode(histogram: Any) -> str:
    return bytes(histogram.encode()).decode("ascii")


def decode(text: str) -> Any:
    return HdrHistogram.decode(text.encode("ascii"))


def merged(histograms: Iterable[Any]) -> Any:
    """The sum of `histograms`: its counts are exactly their counts added."""
    total = _new()
    for histogram in histograms:
        total.add(histogram)
    return total


def summary_ms(histogram: Any) -> dict[str, Any]:
    """Count, mean, the PERCENTILES and max, in milliseconds (None without samples)."""
    count = int(histogram.get_total_count())
    if count == 0:
        return {"count": 0, **{f"p{p:g}": None for p in PERCENTILES}, "max": None, "mean": None}
    return {
        "count": count,
        **{f"p{p:g}": histogram.get_value_at_percentile(p) / 1000 for p in PERCENTILES},
        "max": histogram.get_max_value() / 1000,
        "mean": round(histogram.get_mean_value() / 1000, 3),
    }
