"""A request-rate series from a `timestamp,value` CSV, on a regular grid, with what was wrong in it.

Models need one value per step. The interval is inferred (the median gap between rows); rows that
do not parse are skipped and reported, duplicate timestamps are averaged and reported, missing steps
are filled by linear interpolation and reported. Nothing in a user's file crashes the reader: what
cannot be used is named, with its line number, and the series refuses only when too little is left.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Series", "SeriesError", "read_csv"]

MIN_DAYS = 3.0
"""Fewer days of data cannot fit a daily season and leave a held-out part to judge it on."""
_SHOWN = 5
"""Bad rows named one by one in a report; the rest are counted."""


class SeriesError(ValueError):
    """The file cannot be read as a rate series; the message names the file and the fix."""


@dataclass(frozen=True)
class Series:
    name: str
    index: pd.DatetimeIndex
    """One timestamp per step, regular."""
    values: np.ndarray
    """float64, one per step; filled steps interpolated."""
    step: pd.Timedelta
    bad_rows: list[str] = field(default_factory=list)
    """The first few rows skipped, each as `line N: why`."""
    bad_row_count: int = 0
    duplicates: int = 0
    """Rows whose timestamp another row had (averaged)."""
    filled: int = 0
    """Missing steps filled by interpolation."""

    @property
    def steps_per_day(self) -> int:
        return int(pd.Timedelta(days=1) // self.step)  # read_csv refuses a step that does not divide a day

    def report(self) -> dict[str, object]:
        """What the reader did to the file, for the backtest's JSON and its first lines."""
        return {
            "points": len(self.values),
            "start": self.index[0].isoformat(),
            "end": self.index[-1].isoformat(),
            "interval_seconds": self.step.total_seconds(),
            "bad_rows": self.bad_row_count,
            "bad_rows_shown": self.bad_rows,
            "duplicate_timestamps": self.duplicates,
            "filled_steps": self.filled,
        }


def read_csv(path: Path) -> Series:
    """The series in `path` (a header row naming `timestamp` and `value`, then one row per point)."""
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would hide the header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = list(reader)
    except OSError as exc:
        raise SeriesError(f"{path}: cannot read ({exc.strerror})") from None
    except csv.Error as exc:
        raise SeriesError(f"{path}: line {reader.line_num}: not CSV ({exc}); a stray quote opens a field") from None
    except UnicodeDecodeError:
        raise SeriesError(f"{path}: not a UTF-8 text file; a CSV of timestamp,value rows is expected") from None
    if not rows:
        raise SeriesError(f"{path}: empty; a CSV of timestamp,value rows is expected")
    header = [cell.strip().lower() for cell in rows[0]]
    if "timestamp" not in header or "value" not in header:
        raise SeriesError(f"{path}: the header must name the columns timestamp and value (got {','.join(rows[0])})")
    at, val = header.index("timestamp"), header.index("value")
    stamps: list[datetime] = []
    values: list[float] = []
    bad: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        problem = _point(row, at, val, stamps, values)
        if problem:
            bad.append(f"line {line}: {problem}")
    if len(stamps) < 3:
        raise SeriesError(f"{path}: {len(stamps)} usable rows; a series needs many more" + _first_bad(bad))
    frame = pd.Series(values, index=pd.DatetimeIndex(stamps)).sort_index()
    duplicates = int(frame.index.duplicated().sum())
    frame = frame.groupby(level=0).mean()
    # Exporters jitter timestamps by a second or two, which the median of the gaps can keep: a step
    # within 3 s of whole minutes is taken to them (90 s stays 90 s), any other to whole seconds.
    step = pd.Timedelta(frame.index.to_series().diff().median()).round("s")
    if step >= pd.Timedelta(minutes=1) and abs(step - step.round("min")) <= pd.Timedelta(seconds=3):
        step = step.round("min")
    if step <= pd.Timedelta(0):
        raise SeriesError(f"{path}: cannot infer the interval between points")
    # Bins start at the first point, not at midnight: points at :15 and :45 stay at :15 and :45.
    grid = frame.resample(step, origin="start").mean()
    filled = int(grid.isna().sum())
    grid = grid.interpolate(limit_direction="both")
    days = (grid.index[-1] - grid.index[0]) / pd.Timedelta(days=1)
    if days < MIN_DAYS:
        raise SeriesError(f"{path}: {days:.2f} days of data; a backtest needs at least {MIN_DAYS:g} (a daily season "
                          "to fit and a held-out part to judge)")  # fmt: skip
    if pd.Timedelta(days=1) % step != pd.Timedelta(0):
        raise SeriesError(f"{path}: the interval ({step}) does not divide a day; resample the file to one that does")
    return Series(path.stem, pd.DatetimeIndex(grid.index), grid.to_numpy(dtype=np.float64), step,
                  bad[:_SHOWN], len(bad), duplicates, filled)  # fmt: skip


def _point(row: list[str], at: int, val: int, stamps: list[datetime], values: list[float]) -> str:
    """Append the row's point, or say why it has none."""
    if len(row) <= max(at, val):
        return f"{len(row)} columns, expected at least {max(at, val) + 1}"
    try:
        stamp = pd.Timestamp(row[at].strip())
    except ValueError:
        return f"timestamp {row[at]!r} is not a date and time"
    if stamp is pd.NaT:
        return "no timestamp"
    try:
        value = float(row[val])
    except ValueError:
        return f"value {row[val]!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return f"value {row[val]!r} is not a finite rate >= 0"
    stamps.append(stamp.tz_convert(None) if stamp.tzinfo else stamp)
    values.append(value)
    return ""


def _first_bad(bad: list[str]) -> str:
    return f" ({len(bad)} rows skipped; first: {bad[0]})" if bad else ""
