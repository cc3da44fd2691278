"""`peakguard incident draft RUN_ID`: an incident document drafted from a runbook run's journal, for
the incident memory (`incidents/`, checked by infra/incident_index.py).

What the journal can say is filled in: the signals the run's readings found over their limits (by
the alert signal that watches each), a time line of what the run did, what it changed or put back,
and the run itself. With `--diagnosis` (what `peakguard diagnose --json` wrote), the root cause
section carries its verdict, ranked causes and where the time went, marked as the diagnosis's, not
the review's. What only a person can say is not invented: the root cause stays the reviewer's to
write, and the document stays `status: draft` (linked from no alert) until someone writes it and
marks it reviewed. A document is never overwritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from infra.incident_index import DEFAULT_FOLDER, SECTIONS, IncidentError, parse
from runbooks.engine.journal import Journal, default_journal_dir
from runbooks.errors import UnknownRunError

__all__ = ["READING_SIGNALS", "diagnosis_lines", "draft", "register", "signals_seen"]

READING_SIGNALS = {
    "latency": "p99 latency",
    "serverErrors": "error rate",
    "refusals": "shed rate",
    "demand": "qps",
    "breakerOpen": "circuit breaker",
}
"""A gate reading's share-of-limit keys (runbooks/library/service_gates.py, emergency_stop.py) and
the alert signal (infra/alerts.py) that watches the same thing."""
_SHOWN = {"step_started", "step_note", "step_applied", "step_verified", "step_done", "step_skipped",
          "step_watch_reading", "step_watch_ended", "step_left_to_operator", "run_stopped", "rollback_started",
          "rollback_step_done", "rollback_done", "run_verified", "run_finished"}  # fmt: skip


def _shares(value: Any) -> Iterator[tuple[str, float]]:
    """Every (key, number) under a READING_SIGNALS key anywhere in a record."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in READING_SIGNALS and isinstance(item, int | float) and not isinstance(item, bool):
                yield key, float(item)
            else:
                yield from _shares(item)
    elif isinstance(value, list):
        for item in value:
            yield from _shares(item)


def signals_seen(records: list[dict[str, Any]]) -> dict[str, float]:
    """Alert signal -> the worst share of its limit any reading of the run saw, for those at or over it."""
    worst: dict[str, float] = {}
    for record in records:
        for key, share in _shares(record):
            signal = READING_SIGNALS[key]
            worst[signal] = max(worst.get(signal, 0.0), share)
    return {signal: share for signal, share in worst.items() if share >= 1.0}


def _when(record: dict[str, Any]) -> str:
    return dt.datetime.fromisoformat(record["at"]).strftime("%H:%M:%S")


def _what(record: dict[str, Any]) -> str:
    event, step = record["event"], record.get("step", "")
    raw_gate = record.get("gate")
    gate: dict[str, Any] = raw_gate if isinstance(raw_gate, dict) else {}
    text: str = {
        "step_started": f"{step}: {record.get('summary', '')}",
        "step_note": record.get("text", ""),
        "step_verified": f"{step} verified: {gate.get('verdict')} ({gate.get('reason', '')})",
        "step_watch_reading": f"{step} watched: {gate.get('verdict')} ({gate.get('reason', '')})",
        "step_watch_ended": f"{step} ended: {record.get('how', '')}",
        "run_stopped": f"stopped before {step}: {record.get('reason', '')}",
        "rollback_started": f"rollback: {record.get('reason', '')}",
        "run_verified": f"health gate: {gate.get('verdict')} ({gate.get('reason', '')})",
        "run_finished": f"finished {record.get('status')}: {record.get('reason', '')}",
        "step_left_to_operator": f"{step} left to an operator: {record.get('command', '')}",
    }.get(event, f"{event.replace('_', ' ')} {step}".strip())
    return text.replace("|", "/").replace("\n", " ")


def diagnosis_lines(diagnosis: Mapping[str, Any], *, source: str) -> list[str]:
    """The root cause section's part from a diagnosis (`peakguard diagnose --json`)."""
    lines = [f"What `peakguard diagnose` said ({source}), for the reviewer to confirm or correct:", ""]
    try:
        lines.append(f"- **Verdict**: {diagnosis['verdict']}: {diagnosis['reason']}")
        for rank, finding in enumerate(diagnosis["findings"], 1):
            runbook = finding.get("runbook") or "no runbook"
            lines.append(f"- {rank}. `{finding['cause']}` (score {float(finding['score']):.2f}, {runbook}): "
                         f"{finding['summary']}")  # fmt: skip
        stages = dict((diagnosis.get("time") or {}).get("stages_ms") or {})
        if stages:
            lines.append("- Where a request's time went: " + ", ".join(
                f"{k} {float(v):.1f} ms" for k, v in sorted(stages.items(), key=lambda kv: -float(kv[1]))))  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{source}: not a diagnosis (`peakguard diagnose --json` writes one): {exc!r}") from None
    return [*lines, ""]


def draft(
    journal: Journal, diagnosis: Mapping[str, Any] | None = None, *, diagnosis_source: str = ""
) -> tuple[str, str]:
    """(document id, Markdown) for the run the journal records, with the diagnosis if one is given."""
    records = list(journal.records())
    started = next((r for r in records if r["event"] == "run_started"), None)
    if started is None:
        raise UnknownRunError(
            f"{journal.path}: no run_started record: not a run's journal, or a run refused before it began"
        )
    finished = next((r for r in reversed(records) if r["event"] == "run_finished"), None)
    runbook, env = started["plan"]["runbook"], started["env"]
    day = dt.datetime.fromisoformat(started["at"]).date()
    document_id = f"{day.isoformat()}-{env}-{runbook}-{journal.run_id.rsplit('-', 1)[-1]}"
    seen = signals_seen(records)
    status = finished["status"] if finished else "unfinished (no run_finished record: see `peakguard runbook resume`)"
    signal_list = ", ".join(sorted(seen))
    lines = [
        "---",
        f"id: {document_id}",
        f'title: "{runbook} in {env} on {day.isoformat()}: {status.split(" ")[0]} (draft: give it a title)"',
        f"date: {day.isoformat()}",
        "status: draft",
        f"signals: [{signal_list}]",
        f"runbooks: [{runbook}]",
        f"runs: [{journal.run_id}]",
        "---",
        "",
        f"# {runbook} in {env} on {day.isoformat()}",
        "",
        f"Drafted by `peakguard incident draft {journal.run_id}` from the run's journal. A reviewer writes",
        "the root cause, checks the rest, and sets `status: reviewed`; until then no alert links it.",
        "",
        f"## {SECTIONS[0]}",
        "",
    ]
    if seen:
        lines += [f"- **{signal}**: at worst {share:.3g}x its limit in the run's readings." for signal, share in
                  sorted(seen.items())]  # fmt: skip
    else:
        lines.append("- No reading of the run was over a limit (the page that started it is the reviewer's to add).")
    lines += ["", f"## {SECTIONS[1]}", "", "| UTC | what |", "|---|---|",
              f"| {_when(started)} | {runbook} started by {started.get('operator', '?')} in {env} |"]  # fmt: skip
    lines += [f"| {_when(r)} | {_what(r)} |" for r in records if r["event"] in _SHOWN]
    lines += [
        "",
        f"## {SECTIONS[2]}",
        "",
        *([] if diagnosis is None else diagnosis_lines(diagnosis, source=diagnosis_source or "a diagnosis")),
        "_For the reviewer: what made the signals above go over their limits. The journal shows what the "
        "runbook saw and did, not why._",
        "",
        f"## {SECTIONS[3]}",
        "",
    ]
    done = [r["step"] for r in records if r["event"] == "step_done"]
    undone = [r["step"] for r in records if r["event"] == "rollback_step_done"]
    lines.append(f"- Steps done: {', '.join(done) or 'none'}; put back: {', '.join(undone) or 'none'}.")
    if finished:
        lines.append(f"- Outcome: {finished['status']}: {finished.get('reason', '')}")
    lines += ["", f"## {SECTIONS[4]}", "", f"- `{journal.run_id}` ({status}), journal `{journal.path.name}` in the "
              "runner's journal folder", ""]  # fmt: skip
    return document_id, "\n".join(lines)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "incident",
        help="the incident memory: draft a document from a runbook run",
        description="The incident memory (incidents/): one reviewed document per incident, linked from every alert "
        "that shares its signals.",
    )
    actions = parser.add_subparsers(dest="incident_action", metavar="ACTION", required=True)
    draft_parser = actions.add_parser(
        "draft",
        help="draft a document from a runbook run's journal",
        description="Draft incidents/<id>.md from the journal of RUN_ID: signals, time line, what the run changed. "
        "The root cause is left to the reviewer, and the document is a draft until they set status: reviewed. "
        "An existing document is never overwritten. Exit status: 0 written, 2 refused (unknown run, document "
        "exists).",
    )
    draft_parser.add_argument("run_id", metavar="RUN_ID", help="the run (its journal's name, as `runbook run` printed)")
    draft_parser.add_argument("--journal-dir", type=Path, default=None,
                              help="where run journals are (default: $PEAKGUARD_JOURNAL_DIR or "
                              "~/.local/state/peakguard/runs)")  # fmt: skip
    draft_parser.add_argument("--diagnosis", type=Path, default=None,
                              help="a diagnosis of the incident (`peakguard diagnose --json FILE`): its verdict, "
                              "ranked causes and where the time went go in the root cause section, as the "
                              "diagnosis's, for the reviewer")  # fmt: skip
    draft_parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER,
                              help="the incidents folder (default: this checkout's incidents/)")  # fmt: skip
    draft_parser.set_defaults(handler=_draft)


def _draft(args: argparse.Namespace) -> int:
    try:
        journal = Journal.open(args.journal_dir or default_journal_dir(), args.run_id)
        diagnosis = None
        if args.diagnosis is not None:
            try:
                diagnosis = json.loads(args.diagnosis.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"--diagnosis {args.diagnosis}: {exc}") from None
        document_id, text = draft(journal, diagnosis, diagnosis_source=str(args.diagnosis or ""))
    except (UnknownRunError, ValueError) as exc:
        print(f"peakguard incident: {exc}", file=sys.stderr)
        return 2
    path = args.out / f"{document_id}.md"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        print(f"peakguard incident: {path} exists; a document is never overwritten: edit it, or move it away",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        parse(path)
    except IncidentError as exc:  # a draft that fails the index's checks is a bug here: say so, keep the file
        print(f"peakguard incident: drafted {path}, but it does not check: {exc}", file=sys.stderr)
        return 1
    print(f"drafted {path}: write its root cause, check the rest, then set status: reviewed")
    return 0
