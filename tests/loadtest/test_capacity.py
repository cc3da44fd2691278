"""One worker's capacity: the ceiling is the highest rate sustained with every lower one; a busy
machine is refused; a short real run sends and gets every request answered, and says whether it
kept its schedule by the generator's bar."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import capacity
from loadtest.capacity import ceiling_of, measure


def _row(rps: float, sustained: bool) -> dict[str, Any]:
    return {"rps": rps, "sustained": sustained}


@pytest.mark.parametrize(("rows", "ceiling"), [
    ([_row(1000, True), _row(2000, True), _row(3000, False)], 2000),
    ([_row(3000, True), _row(1000, True), _row(2000, False)], 1000),  # behind at 2000: 3000 was luck
    ([_row(1000, False)], None),
])  # fmt: skip
def test_the_ceiling_is_the_highest_rate_kept_with_every_lower_one(rows: list[dict[str, Any]], ceiling: Any) -> None:
    assert ceiling_of(rows) == ceiling


def test_a_busy_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity.os, "getloadavg", lambda: (99.0, 99.0, 99.0))

    with pytest.raises(RuntimeError, match=r"the machine is busy .* run it on a quiet machine"):
        measure([1000], 1.0)


def test_a_short_run_sends_everything_and_judges_it_by_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # CI's neighbours are not measured

    report = measure([200], 2.0)

    (row,) = report["rates"]
    assert 200 <= row["sent"] <= 420 and row["answered"] == row["sent"] and row["lost"] == 0
    assert row["sustained"] == (row["latenessMs"]["p99"] <= report["lagBarMs"])
    assert report["workersFor100k"] == (500 if row["sustained"] else None)
