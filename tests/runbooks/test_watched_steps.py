"""A watched step (a chaos experiment): its gate is read until the change ends by itself, and the
first failed reading ends the step at once and rolls it back (the rollback is what stops the fault)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from runbooks.engine.spec import Context, Ended, Gate, Reading, Step, Watch
from runbooks.errors import TransientError
from tests.runbooks.conftest import (
    EngineFactory,
    World,
    approved_plan,
    gate,
    of_event,
    only_journal,
    records,
    setter,
    toy_runbook,
)

COURSE = 6
"""Readings a toy experiment lasts when nothing stops it."""


def _experiment(world: World, *, ends: Ended | None = None, blind_for: float = 30.0, timeout: float = 5.0) -> Step:
    """A step that turns the fault `chaos` on; it ends by itself after COURSE readings of its gate,
    which reads `p99` from a script of values (None: the gate cannot see)."""
    world.values["chaos"] = "off"
    world.values["readings"] = 0

    def p99(w: World) -> Any:
        script = w.values["script"]
        w.values["readings"] += 1
        return script[min(w.values["readings"], len(script)) - 1]

    def over(context: Context) -> Ended | None:
        w = context.ports
        if w.values["chaos"] != "on":
            return Ended(False, "the experiment is not running")
        if w.values["readings"] >= w.values.get("course", COURSE):
            return ends or Ended(True, "completed")
        return None

    step = setter("experiment", "chaos", to="on", destructive=True, timeout=timeout)
    return dataclasses.replace(step, watch=Watch(gate("p99", p99, at_most=1.0), over, blind_for=blind_for))


def _healthy() -> Gate:
    """The trigger a destructive step re-checks: the service is healthy before the fault."""
    return Gate("healthy", lambda context: Reading(0.1, query="toy:healthy"), at_most=1.0)


def _run(engine_for: EngineFactory, world: World, step: Any) -> Any:
    engine = engine_for(toy_runbook(step, trigger=_healthy()))
    plan, approval = approved_plan(engine)
    return engine.run(plan, approval)


def test_a_course_run_within_the_gate_succeeds_and_journals_only_the_changes_of_verdict(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.values["script"] = [0.2, 0.3, 0.4, 0.2, 0.3, 0.2]

    outcome = _run(engine_for, world, _experiment(world))

    assert outcome.status == "succeeded", outcome.reason
    assert world.values["readings"] == COURSE, "read until the experiment ended, not once"
    assert world.calls("restore", "experiment") == 0, "nothing stopped a fault that ran its course"
    journal = only_journal(journal_dir)
    names = [r["event"] for r in records(journal) if r.get("step") == "experiment"]
    assert names == ["step_started", "step_applied", "step_watch_started", "step_watch_reading",
                     "step_watch_ended", "step_done"]  # fmt: skip
    (ended,) = of_event(journal, "step_watch_ended")
    assert (ended["ok"], ended["how"], ended["readings"]) == (True, "completed", COURSE)


def test_the_first_failed_reading_stops_the_fault_before_another_reading(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    world.values["script"] = [0.2, 0.3, 4.0, 0.2, 0.2, 0.2]
    stopped_at: list[int] = []
    world.before_restore["experiment"] = lambda _: stopped_at.append(world.values["readings"])

    outcome = _run(engine_for, world, _experiment(world))

    assert outcome.status == "rolled-back"
    assert "p99 broke while watched: p99: 4 > 1" in outcome.reason
    assert stopped_at == [3], "stopped right after the third reading, the one that failed"
    assert world.values["chaos"] == "off"
    readings = [r["gate"]["verdict"] for r in of_event(only_journal(journal_dir), "step_watch_reading")]
    assert readings == ["pass", "fail"]


def test_an_experiment_that_ended_badly_by_itself_fails_the_run_with_its_reason(
    engine_for: EngineFactory, world: World
) -> None:
    world.values["script"] = [0.2] * COURSE
    ends = Ended(False, "stopped by its stop condition: alarm target-5xx in ALARM")

    outcome = _run(engine_for, world, _experiment(world, ends=ends))

    assert outcome.status == "rolled-back"
    assert "alarm target-5xx in ALARM" in outcome.reason


@pytest.mark.parametrize(("script", "status"), [
    ([0.2, None, 0.2, 0.2, 0.2, 0.2], "succeeded"),  # blind for one reading: shorter than blind_for
    ([0.2, None, None, None, None, None], "rolled-back"),  # blind for good
])  # fmt: skip
def test_blindness_is_tolerated_only_for_blind_for_seconds(
    engine_for: EngineFactory, world: World, script: list[float | None], status: str
) -> None:
    world.values["script"] = script

    outcome = _run(engine_for, world, _experiment(world, blind_for=0.12))

    assert outcome.status == status, outcome.reason
    if status == "rolled-back":
        assert "could not judge" in outcome.reason and "a fault nobody can see is stopped" in outcome.reason


def test_an_experiment_still_running_at_the_step_timeout_is_stopped(engine_for: EngineFactory, world: World) -> None:
    step = _experiment(world, timeout=0.4)
    # It never ends by itself within the test: a passing reading each time, far fewer than COURSE.
    world.values["script"] = [0.2] * 10_000
    world.values["course"] = 10_000

    started = time.monotonic()
    outcome = _run(engine_for, world, step)

    assert outcome.status == "rolled-back"
    assert "still running at its timeout" in outcome.reason
    assert time.monotonic() - started < 5


def test_a_watch_needs_positive_blind_seconds() -> None:
    with pytest.raises(ValueError, match="blind_for must be positive"):
        Watch(gate("p99", lambda w: 0.1, at_most=1.0), lambda c: None, blind_for=0)


def test_a_change_that_cannot_be_read_for_a_moment_is_watched_on(engine_for: EngineFactory, world: World) -> None:
    world.values["script"] = [0.2] * COURSE
    step = _experiment(world)
    unreadable = {"left": 2}
    over = step.watch.over

    def flaky(context: Context) -> Ended | None:
        if unreadable["left"]:
            unreadable["left"] -= 1
            raise TransientError("ThrottlingException: rate exceeded")
        return over(context)

    outcome = _run(engine_for, world, dataclasses.replace(step, watch=dataclasses.replace(step.watch, over=flaky)))

    assert outcome.status == "succeeded", outcome.reason
    assert unreadable["left"] == 0


def test_a_change_that_stays_unreadable_is_stopped_after_blind_for(engine_for: EngineFactory, world: World) -> None:
    world.values["script"] = [0.2] * COURSE
    step = _experiment(world, blind_for=0.2)

    def gone(context: Context) -> Ended | None:
        raise TransientError("this run's experiment is not listed by FIS")

    outcome = _run(engine_for, world, dataclasses.replace(step, watch=dataclasses.replace(step.watch, over=gone)))

    assert outcome.status == "rolled-back"
    assert "cannot tell whether the change still runs" in outcome.reason
