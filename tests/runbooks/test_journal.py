"""The journal: exclusive per run, append-only JSON lines, a torn last line skipped on reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbooks.engine.journal import Journal, new_run_id
from runbooks.errors import UnknownRunError


def test_records_come_back_in_the_order_written(journal_dir: Path) -> None:
    journal = Journal.create(journal_dir, "dev-toy-1")
    journal.write("run_started", plan={"steps": []})
    journal.write("step_done", step="a", observed=5)
    journal.write("step_done", step="b", observed="on")
    assert [(r["event"], r.get("step")) for r in journal.records()] == [
        ("run_started", None),
        ("step_done", "a"),
        ("step_done", "b"),
    ]
    last = journal.last("step_done")
    assert last is not None
    assert last["step"] == "b"
    assert journal.last("run_finished") is None
    assert journal.run_id == "dev-toy-1"


def test_create_is_exclusive(journal_dir: Path) -> None:
    journal = Journal.create(journal_dir, "dev-toy-1")
    journal.write("run_started")
    with pytest.raises(FileExistsError):
        Journal.create(journal_dir, "dev-toy-1")
    assert [r["event"] for r in journal.records()] == ["run_started"]


def test_new_run_ids_name_the_env_and_runbook_and_differ() -> None:
    first, second = new_run_id("prod", "emergency-stop"), new_run_id("prod", "emergency-stop")
    assert first.startswith("prod-emergency-stop-")
    assert first != second


def test_open_of_an_unknown_run_lists_the_known_ones(journal_dir: Path) -> None:
    Journal.create(journal_dir, "dev-toy-1")
    Journal.create(journal_dir, "dev-toy-2")
    with pytest.raises(
        UnknownRunError, match=r"no journal for run 'dev-toy-9' in .*; runs there: dev-toy-1, dev-toy-2"
    ):
        Journal.open(journal_dir, "dev-toy-9")


def test_open_in_a_missing_directory_is_an_unknown_run(tmp_path: Path) -> None:
    with pytest.raises(UnknownRunError, match="no journal for run 'dev-toy-1'"):
        Journal.open(tmp_path / "nowhere", "dev-toy-1")


def test_open_finds_a_created_run(journal_dir: Path) -> None:
    created = Journal.create(journal_dir, "dev-toy-1")
    created.write("run_started")
    assert Journal.open(journal_dir, "dev-toy-1").path == created.path


def test_records_skip_a_torn_last_line(journal_dir: Path) -> None:
    journal = Journal.create(journal_dir, "dev-toy-1")
    journal.write("run_started")
    journal.write("step_started", step="a")
    with journal.path.open("a", encoding="utf-8") as handle:
        handle.write('{"at": "2026-01-01T00:00:00.000+00:00", "event": "step_ap')
    assert [r["event"] for r in journal.records()] == ["run_started", "step_started"]
    assert journal.last("step_applied") is None


def test_records_written_after_a_torn_line_are_read(journal_dir: Path) -> None:
    # A runner killed mid-write leaves a torn line; `resume` then appends to the same journal.
    # What it writes must be readable, or the run never looks finished.
    journal = Journal.create(journal_dir, "dev-toy-1")
    journal.write("run_started")
    with journal.path.open("a", encoding="utf-8") as handle:
        handle.write('{"at": "2026-01-01T00:00:00.000+00:00", "event": "step_ap')
    journal.write("run_resumed")
    journal.write("run_finished", status="succeeded")
    assert [r["event"] for r in journal.records()] == ["run_started", "run_resumed", "run_finished"]
