"""`peakguard incident draft RUN_ID` on a real engine run's journal: the signals its readings found
over their limits, its time line and outcome, as a draft the incident index accepts; never over an
existing document."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from infra.incident_index import parse
from peakguard.cli import main
from runbooks.engine.spec import Context, Gate, Reading
from tests.runbooks.conftest import EngineFactory, World, approved_plan, only_journal, setter, toy_runbook


def _slow_service(context: Context) -> Reading:
    """What the service gates read: each signal as a share of its limit; p99 three times the SLO."""
    return Reading(3.0, raw={"latency": 3.0, "serverErrors": 0.0, "refusals": 0.2, "answered": 140.0}, query="toy")


def _rolled_back_run(engine_for: EngineFactory, journal_dir: Path) -> str:
    step = setter("scale", "a", to=5, verify=Gate("service within SLO", _slow_service, at_most=1.0))
    # A toy runbook under a real runbook's name: documents name only the runbooks peakguard has.
    engine = engine_for(dataclasses.replace(toy_runbook(step), name="emergency-stop"))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    return only_journal(journal_dir).stem


def test_a_draft_carries_the_signals_time_line_and_outcome_and_checks(
    engine_for: EngineFactory, world: World, journal_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _rolled_back_run(engine_for, journal_dir)
    out = tmp_path / "incidents"

    code = main(["incident", "draft", run_id, "--journal-dir", str(journal_dir), "--out", str(out)])

    assert code == 0, capsys.readouterr().err
    (path,) = out.glob("*.md")
    incident = parse(path)
    assert incident.status == "draft", "no alert links it before a person reviews it"
    assert incident.signals == ("p99 latency",), "refusals at 0.2 of their limit were no signal"
    assert (incident.runs, incident.runbooks) == ((run_id,), ("emergency-stop",))
    text = path.read_text()
    assert "| scale: set a |" in text and "rollback: scale: verification fail" in text
    assert "finished rolled-back" in text and "put back: scale" in text
    assert "_For the reviewer:" in text, "the root cause is not invented"


def test_an_existing_document_is_never_overwritten(
    engine_for: EngineFactory, world: World, journal_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _rolled_back_run(engine_for, journal_dir)
    args = ["incident", "draft", run_id, "--journal-dir", str(journal_dir), "--out", str(tmp_path)]
    assert main(args) == 0
    (path,) = tmp_path.glob("*.md")
    path.write_text(path.read_text().replace("status: draft", "status: reviewed"))
    reviewed = path.read_text()

    assert main(args) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert path.read_text() == reviewed


def test_an_unknown_run_is_refused_naming_the_runs_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "dev-toy-20261207T000000Z-abcd.jsonl").write_text("")

    assert main(["incident", "draft", "dev-nope", "--journal-dir", str(tmp_path / "runs"), "--out", str(tmp_path)]) == 2
    assert "runs there: dev-toy-20261207T000000Z-abcd" in capsys.readouterr().err


def test_a_draft_with_a_diagnosis_carries_its_ranked_causes_as_the_diagnosis_s_not_the_review_s(
    engine_for: EngineFactory, world: World, journal_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diagnosis.causes import diagnose
    from tests.diagnosis.fleet import Pod, build

    run_id = _rolled_back_run(engine_for, journal_dir)
    surge = {"answered": 40.0, "shed": 30.0, "queue": 0.35, "latency": 0.75}
    diagnosis = diagnose(build([Pod("a", changes=[(40, surge)]), Pod("b", node="node-b", changes=[(40, surge)])]))
    (tmp_path / "diagnosis.json").write_text(json.dumps(diagnosis.to_dict(), default=str))
    (tmp_path / "wrong.json").write_text(json.dumps({"verdict": "cause"}))
    out = tmp_path / "incidents"
    args = ["incident", "draft", run_id, "--journal-dir", str(journal_dir), "--out", str(out)]

    assert main([*args, "--diagnosis", str(tmp_path / "wrong.json")]) == 2
    assert "not a diagnosis" in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("*.md")), "nothing is written from a wrong diagnosis"
    assert main([*args, "--diagnosis", str(tmp_path / "diagnosis.json")]) == 0

    (path,) = out.glob("*.md")
    parse(path)
    text = path.read_text()
    assert "What `peakguard diagnose` said" in text and "for the reviewer to confirm or correct" in text
    assert "- 1. `overload` (score" in text and "emergency-stop" in text
    assert "Where a request's time went: queue" in text
    assert "_For the reviewer:" in text, "the diagnosis does not replace the review"
