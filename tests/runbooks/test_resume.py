"""Resuming a run whose runner died: nothing finished is redone, the interrupted step and any rollback finish.

The runner's death is a BaseException that is neither an Exception nor Ctrl-C, so the engine cannot
catch it: it leaves the journal as a killed process would, with no `run_finished`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbooks.engine.journal import Journal
from runbooks.engine.planning import make_plan
from runbooks.engine.run import Engine
from runbooks.engine.spec import Runbook
from runbooks.errors import LockHeldError, RunbookError
from tests.runbooks.conftest import (
    EngineFactory,
    InMemoryLock,
    RunnerKilled,
    World,
    approved_plan,
    events,
    gate,
    in_order,
    of_event,
    only_journal,
    setter,
    toy_runbook,
)


def _three_steps() -> Runbook:
    return toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on"), setter("c", "c", to=3))


def _kill(_: Any) -> None:
    raise RunnerKilled


def _fail(_: Any) -> None:
    raise RuntimeError("500 from the API")


def _killed_run(engine: Engine, journal_dir: Path) -> Journal:
    """Run until the runner dies; the journal it leaves."""
    with pytest.raises(RunnerKilled):
        engine.run(*approved_plan(engine))
    path = only_journal(journal_dir)
    assert "run_finished" not in events(path)
    return Journal.open(journal_dir, path.stem)


def test_resume_finishes_the_run_without_redoing_finished_steps(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    assert (world.values["a"], world.values["b"], world.values["c"]) == (5, "off", 1)

    del world.before_apply["b"]
    outcome = engine_for(_three_steps()).resume(journal)

    assert outcome.status == "succeeded"
    assert outcome.run_id == journal.run_id
    assert outcome.journal == journal.path
    assert world.calls("apply", "a") == 1
    assert world.calls("apply", "b") == 2  # the interrupted attempt, then the resumed one
    assert world.calls("apply", "c") == 1
    assert world.order("restore") == []
    assert (world.values["a"], world.values["b"], world.values["c"]) == (5, "on", 3)
    (resumed,) = of_event(journal.path, "run_resumed")
    assert resumed["done"] == ["a"]
    assert in_order(events(journal.path), ["run_resumed", "lock_acquired", "step_started", "run_finished"])
    assert [r["step"] for r in of_event(journal.path, "step_done")] == ["a", "b", "c"]


def test_resume_of_a_run_killed_during_rollback_finishes_the_rollback(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    def p99(state: World) -> float:
        return 9.0 if state.values["b"] == "on" else 0.1

    def runbook() -> Runbook:
        return toy_runbook(
            setter("a", "a", to=5),
            setter("b", "b", to="on", verify=gate("p99", p99, at_most=1.0)),
            setter("c", "c", to=3),
            health=gate("p99", p99, at_most=1.0),
        )

    world.before_restore["a"] = _kill  # dies after restoring b, while restoring a
    journal = _killed_run(engine_for(runbook()), journal_dir)
    assert (world.values["a"], world.values["b"]) == (5, "off")

    del world.before_restore["a"]
    outcome = engine_for(runbook()).resume(journal)

    assert outcome.status == "rolled-back"
    assert outcome.rollback_seconds is not None
    assert (world.values["a"], world.values["b"], world.values["c"]) == (2, "off", 1)
    assert world.calls("restore", "b") == 1  # restored before the runner died: not redone
    assert world.calls("restore", "a") == 2
    assert world.calls("apply", "a") == 1
    assert world.calls("apply", "b") == 1
    assert world.calls("apply", "c") == 0
    (finished,) = of_event(journal.path, "run_finished")
    assert finished["status"] == "rolled-back"


def test_resume_rolls_back_when_a_step_not_yet_begun_drifted(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    del world.before_apply["b"]
    world.values["c"] = 9  # someone acted on `c` while the run was dead

    outcome = engine_for(_three_steps()).resume(journal)

    assert outcome.status == "rolled-back"
    assert "c: planned from 1, now 9" in outcome.reason
    assert world.calls("apply", "c") == 0
    assert world.order("restore") == ["a"]  # b was killed before it changed anything
    assert (world.values["a"], world.values["b"], world.values["c"]) == (2, "off", 9)


def test_resume_of_a_finished_run_is_refused(engine_for: EngineFactory, world: World, journal_dir: Path) -> None:
    engine = engine_for(_three_steps())
    outcome = engine.run(*approved_plan(engine))
    with pytest.raises(RunbookError, match=r"already ended: succeeded"):
        engine_for(_three_steps()).resume(Journal.open(journal_dir, outcome.run_id))
    assert world.calls("apply", "a") == 1


def test_resume_of_a_refused_run_is_refused(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    lock.hold_as("alice@laptop")
    engine = engine_for(_three_steps())
    with pytest.raises(LockHeldError):
        engine.run(*approved_plan(engine))
    journal = Journal.open(journal_dir, only_journal(journal_dir).stem)
    lock.holder = None
    with pytest.raises(RunbookError, match="was refused before acting; make a new plan"):
        engine_for(_three_steps()).resume(journal)
    assert world.log == []


def test_resume_takes_the_lock_and_is_refused_while_another_runner_holds_it(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    del world.before_apply["b"]
    lock.hold_as("alice@laptop")
    with pytest.raises(LockHeldError, match="alice@laptop"):
        engine_for(_three_steps()).resume(journal)
    assert world.calls("apply", "b") == 1
    outcome = engine_for(_three_steps()).resume(journal, break_lock=True)
    assert outcome.status == "succeeded"
    assert world.values["b"] == "on"


def test_a_file_that_is_not_a_run_journal_is_refused(engine_for: EngineFactory, journal_dir: Path) -> None:
    journal = Journal.create(journal_dir, "dev-toy-stray")
    journal.write("note", text="not a run")
    with pytest.raises(RunbookError, match="no run_started record"):
        engine_for(_three_steps()).resume(journal)


def test_resume_after_a_torn_last_line_finishes_and_the_run_then_reads_as_ended(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    with journal.path.open("a", encoding="utf-8") as handle:
        handle.write('{"at": "2026-01-01T00:00:00.000+00:00", "event": "rollback_st')  # killed mid-write
    del world.before_apply["b"]

    outcome = engine_for(_three_steps()).resume(journal)
    assert outcome.status == "succeeded"
    assert world.calls("apply", "a") == 1
    assert (world.values["b"], world.values["c"]) == ("on", 3)

    # The resumed run's own records must be readable: the run has ended and cannot be resumed again.
    reopened = Journal.open(journal_dir, journal.run_id)
    finished = reopened.last("run_finished")
    assert finished is not None
    assert finished["status"] == "succeeded"
    with pytest.raises(RunbookError, match="already ended"):
        engine_for(_three_steps()).resume(reopened)
    assert world.calls("apply", "c") == 1


def test_the_plan_in_the_journal_pins_the_rollback_target_across_a_resume(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    del world.before_apply["b"]
    # A fresh plan now would see a=5; the resumed run must still roll `a` back to the original 2.
    assert make_plan(_three_steps(), engine_for(_three_steps()).context).step("a").before == 5
    world.before_apply["c"] = _fail
    outcome = engine_for(_three_steps()).resume(journal)
    assert outcome.status == "rolled-back"
    assert (world.values["a"], world.values["b"], world.values["c"]) == (2, "off", 1)


def test_resume_waits_out_the_lease_its_own_dead_runner_left_without_break_lock(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    """kill -9 leaves the runner's lease until it lapses; the same run's resume waits for that (it
    is at most the lease's duration), where another run's lease would refuse it."""
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    del world.before_apply["b"]
    (acquired,) = of_event(journal.path, "lock_acquired")
    lock.hold_as(acquired["holder"], ttl=0.4)  # the dead runner's lease, not yet lapsed

    outcome = engine_for(_three_steps(), lock_ttl=1.0).resume(journal)

    assert outcome.status == "succeeded"
    (waited,) = of_event(journal.path, "lock_waiting")
    assert waited["holder"] == acquired["holder"]
    assert waited["seconds"] <= 1.0 + 1.0
    assert world.values["b"] == "on"


def test_resume_is_refused_while_a_live_runner_of_the_same_run_renews_its_lease(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    world.before_apply["b"] = _kill
    journal = _killed_run(engine_for(_three_steps()), journal_dir)
    del world.before_apply["b"]
    (acquired,) = of_event(journal.path, "lock_acquired")
    lock.hold_as(acquired["holder"], ttl=300)  # that runner is alive after all

    with pytest.raises(LockHeldError, match=journal.run_id):
        engine_for(_three_steps(), lock_ttl=0.5).resume(journal)
    assert world.calls("apply", "b") == 1
