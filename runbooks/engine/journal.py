"""The append-only record of a run: one JSON object per line, flushed to disk before the next step.

Everything `resume` and an auditor need is here: the plan (with every step's observed state,
which is also the rollback target), the operator, each step's start, action, verification and
timings, and any rollback. A runner killed mid-write leaves at most a torn last line, which
reading skips.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbooks.errors import UnknownRunError

__all__ = ["Journal", "default_journal_dir", "new_run_id"]


def default_journal_dir() -> Path:
    """`$PEAKGUARD_JOURNAL_DIR`, else `$XDG_STATE_HOME/peakguard/runs` (~/.local/state/...)."""
    if configured := os.environ.get("PEAKGUARD_JOURNAL_DIR"):
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "peakguard" / "runs"


def new_run_id(env: str, runbook: str) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{env}-{runbook}-{stamp}-{secrets.token_hex(2)}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Journal:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.stem

    @classmethod
    def create(cls, directory: Path, run_id: str) -> Journal:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{run_id}.jsonl"
        # Exclusive: two runs never share a journal.
        with path.open("x", encoding="utf-8"):
            pass
        return cls(path)

    @classmethod
    def open(cls, directory: Path, run_id: str) -> Journal:
        path = directory / f"{run_id}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in directory.glob("*.jsonl")) if directory.is_dir() else []
            hint = f"; runs there: {', '.join(known[-5:])}" if known else ""
            raise UnknownRunError(f"no journal for run {run_id!r} in {directory}{hint}")
        return cls(path)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"at": _now(), "event": event, **fields}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        if self._ends_torn():
            # A runner killed mid-write left a partial line: end it, so this record stands alone.
            line = "\n" + line
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def _ends_torn(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"

    def records(self) -> Iterator[dict[str, Any]]:
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    # A line torn by a runner killed mid-write: the write it began did not happen.
                    continue

    def last(self, event: str) -> dict[str, Any] | None:
        found = None
        for record in self.records():
            if record["event"] == event:
                found = record
        return found
