"""`forecast.series.read_csv`: the interval inferred, and what is wrong in a user's file named
(bad rows with their line numbers, duplicates, gaps) or refused with the file's name, never crashed on."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from forecast.series import SeriesError, read_csv

START = datetime(2024, 3, 1)


def _rate(at: datetime) -> float:
    """A daily sine around 100 requests per interval: what a day of traffic looks like."""
    minute = at.hour * 60 + at.minute
    return 100 + 50 * math.sin(2 * math.pi * minute / 1440)


def _lines(minutes: float = 30, days: float = 4.0, start: datetime = START) -> list[str]:
    """The CSV's lines, header first: line N of the file is `lines[N - 1]`."""
    stamps = [start + timedelta(minutes=minutes * i) for i in range(int(days * 1440 / minutes))]
    return ["timestamp,value", *(f"{at.isoformat()},{_rate(at):.4f}" for at in stamps)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("minutes", "per_day"), [(5, 288), (30, 48)])
def test_the_interval_is_inferred_from_the_rows(tmp_path: Path, minutes: int, per_day: int) -> None:
    series = read_csv(_write(tmp_path / "rate.csv", _lines(minutes=minutes, days=3.5)))

    assert series.step == pd.Timedelta(minutes=minutes)
    assert series.steps_per_day == per_day
    assert len(series.values) == int(3.5 * per_day)
    assert series.values[per_day // 4] == pytest.approx(150.0)  # 06:00, the sine's crest
    assert (series.bad_row_count, series.duplicates, series.filled) == (0, 0, 0)
    assert series.name == "rate"


@pytest.mark.parametrize(
    ("row", "why"),
    [
        pytest.param("yesterday-ish,12", "timestamp 'yesterday-ish' is not a date and time", id="bad-timestamp"),
        pytest.param(",12", "no timestamp", id="empty-timestamp"),
        pytest.param("2024-03-02T10:10:00,lots", "value 'lots' is not a number", id="not-a-number"),
        pytest.param("2024-03-02T10:10:00,-3", "value '-3' is not a finite rate >= 0", id="negative"),
        pytest.param("2024-03-02T10:10:00,nan", "value 'nan' is not a finite rate >= 0", id="nan"),
        pytest.param("2024-03-02T10:10:00", "1 columns, expected at least 2", id="too-few-columns"),
    ],
)
def test_a_bad_row_is_skipped_and_named_with_its_line_number(tmp_path: Path, row: str, why: str) -> None:
    lines = _lines()
    lines.insert(40, row)  # an extra row: the good ones around it still make a full grid
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert series.bad_rows == [f"line 41: {why}"]
    assert series.bad_row_count == 1
    assert len(series.values) == len(lines) - 2 and series.filled == 0


def test_only_the_first_five_bad_rows_are_named_and_all_are_counted(tmp_path: Path) -> None:
    lines = _lines()
    for at in (10, 20, 30, 40, 50, 60, 70):
        lines.insert(at - 1, "garbage,1")  # lands on line `at`: earlier inserts are above it
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert [row.split(":")[0] for row in series.bad_rows] == ["line 10", "line 20", "line 30", "line 40", "line 50"]
    assert series.bad_row_count == 7
    assert series.report()["bad_rows"] == 7


def test_duplicate_timestamps_are_averaged_and_counted(tmp_path: Path) -> None:
    lines = _lines()
    twice, thrice = lines[11].split(",")[0], lines[21].split(",")[0]
    lines[11] = f"{twice},10"
    lines += [f"{twice},30", f"{thrice},0", f"{thrice},0"]  # out of order too: the reader sorts
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert series.duplicates == 3  # rows whose timestamp another row had
    assert series.values[10] == pytest.approx(20.0)
    assert series.values[20] == pytest.approx(_rate(datetime.fromisoformat(thrice)) / 3)
    assert len(series.values) == len(lines) - 1 - 3


def test_missing_steps_are_filled_by_linear_interpolation_and_counted(tmp_path: Path) -> None:
    lines = _lines()
    before, after = lines[50].split(",")[0], lines[53].split(",")[0]
    lines[50], lines[53] = f"{before},10", f"{after},40"
    del lines[51:53]  # two steps missing between 10 and 40
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert series.filled == 2
    assert list(series.values[49:53]) == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert len(series.values) == 4 * 48  # the grid is whole again
    assert (series.index[1:] - series.index[:-1] == pd.Timedelta(minutes=30)).all()


def test_timezone_aware_timestamps_are_read_as_utc(tmp_path: Path) -> None:
    lines = ["timestamp,value", *(f"{line.split(',')[0]}+02:00,{line.split(',')[1]}" for line in _lines()[1:])]
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert series.index[0] == pd.Timestamp("2024-02-29T22:00:00")
    assert series.index.tz is None
    assert series.step == pd.Timedelta(minutes=30) and series.bad_row_count == 0


def test_local_times_across_a_clock_change_stay_one_regular_series(tmp_path: Path) -> None:
    # Berlin moves from +01:00 to +02:00 at 02:00 on 2024-03-31: read as UTC, the hour the wall
    # clock skips is neither a gap to fill nor a duplicate to average.
    berlin, start = ZoneInfo("Europe/Berlin"), datetime(2024, 3, 29, tzinfo=ZoneInfo("UTC"))
    stamps = [(start + timedelta(minutes=30 * i)).astimezone(berlin) for i in range(4 * 48)]
    series = read_csv(_write(tmp_path / "rate.csv", ["timestamp,value", *(f"{at.isoformat()},5" for at in stamps)]))

    assert {at.utcoffset() for at in stamps} == {timedelta(hours=1), timedelta(hours=2)}
    assert (series.filled, series.duplicates, len(series.values)) == (0, 0, 4 * 48)


def test_columns_are_found_by_name_in_any_order_and_case(tmp_path: Path) -> None:
    lines = [" Host , VALUE ,Timestamp", *(f"web-1,{line.split(',')[1]},{line.split(',')[0]}" for line in _lines()[1:])]
    series = read_csv(_write(tmp_path / "rate.csv", lines))

    assert series.values[12] == pytest.approx(150.0) and series.bad_row_count == 0


def test_a_header_without_timestamp_and_value_is_refused_naming_the_columns(tmp_path: Path) -> None:
    lines = ["time,rate", *_lines()[1:]]
    with pytest.raises(SeriesError, match=r"must name the columns timestamp and value \(got time,rate\)") as raised:
        read_csv(_write(tmp_path / "rate.csv", lines))
    assert str(tmp_path / "rate.csv") in str(raised.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"timestamp,value\n2024-03-01T00:00:00,\xff\xfe\n", "not a UTF-8 text file", id="not-utf-8"),
        pytest.param(b"timestamp,value\n", "0 usable rows", id="header-only"),
        pytest.param("\n".join(_lines(days=2.5)).encode(), "2.48 days of data; a backtest needs at least 3",
                     id="too-few-days"),
    ],
)  # fmt: skip
def test_a_file_that_cannot_make_a_series_is_refused_naming_the_file(tmp_path: Path, content: bytes, why: str) -> None:
    (path := tmp_path / "rate.csv").write_bytes(content)
    with pytest.raises(SeriesError) as raised:
        read_csv(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert why in str(raised.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match=r"cannot read \(No such file or directory\)") as raised:
        read_csv(tmp_path / "nowhere.csv")
    assert str(tmp_path / "nowhere.csv") in str(raised.value)


def test_an_interval_that_does_not_divide_a_day_is_refused(tmp_path: Path) -> None:
    # A day is not a whole number of 7-minute steps: there would be no daily season to fit.
    with pytest.raises(SeriesError, match=r"the interval \(0 days 00:07:00\) does not divide a day"):
        read_csv(_write(tmp_path / "rate.csv", _lines(minutes=7, days=3.5)))


def test_a_byte_order_mark_does_not_hide_the_header(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with one."""
    path = tmp_path / "rate.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(_lines(days=3.5)) + "\n").encode())

    assert len(read_csv(path).values) == 168


def test_a_stray_quote_is_named_by_its_line_not_a_traceback(tmp_path: Path) -> None:
    lines = _lines(minutes=5, days=20)
    lines[10] = '"' + lines[10]

    with pytest.raises(SeriesError, match=r"line \d+: not CSV") as raised:
        read_csv(_write(tmp_path / "rate.csv", lines))
    assert "stray quote" in str(raised.value)


def test_points_off_the_midnight_grid_keep_their_times(tmp_path: Path) -> None:
    series = read_csv(_write(tmp_path / "rate.csv", _lines(days=3.5, start=START + timedelta(minutes=15))))

    assert series.index[0] == pd.Timestamp(START + timedelta(minutes=15))
    assert series.filled == 0


def test_timestamps_jittered_by_seconds_still_make_a_regular_series(tmp_path: Path) -> None:
    lines = _lines(minutes=5, days=3.5)
    jittered = [lines[0]]
    for k, line in enumerate(lines[1:]):
        stamp, value = line.split(",")
        jittered.append(f"{(datetime.fromisoformat(stamp) + timedelta(seconds=(-2, 0, 2)[k % 3])).isoformat()},{value}")

    series = read_csv(_write(tmp_path / "rate.csv", jittered))

    assert series.step == pd.Timedelta(minutes=5)
    assert len(series.values) == len(lines) - 1


def test_a_step_of_ninety_seconds_is_kept(tmp_path: Path) -> None:
    series = read_csv(_write(tmp_path / "rate.csv", _lines(minutes=1.5, days=3.5)))

    assert series.step == pd.Timedelta(seconds=90)
