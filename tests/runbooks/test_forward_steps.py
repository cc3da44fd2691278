"""A step whose finished work a runbook cannot take back (replaced nodes): when the run fails after
it finished, the rest is put back and the run ends `failed-forward`, saying what stands, never
`rolled-back`; a run that fails before that step finished rolls back as any other."""

from __future__ import annotations

import dataclasses

from tests.runbooks.conftest import EngineFactory, World, approved_plan, of_event, reads, setter, toy_runbook

STANDS = "every node is on the new generation"


def test_a_failed_final_gate_after_a_finished_move_is_failed_forward_not_rolled_back(
    engine_for: EngineFactory, world: World
) -> None:
    world.values["errors"] = 0.5  # the service does not recover with the change in place
    move = dataclasses.replace(setter("move", "b", to="on"), kept_once_done=STANDS)
    engine = engine_for(toy_runbook(setter("a", "a", to=7), move, health=reads("errors", at_most=0.01)))

    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "failed-forward"
    assert f"not taken back: move: {STANDS}" in outcome.reason
    assert world.values["a"] == 2, "what can be put back was put back"
    (kept,) = of_event(outcome.journal, "rollback_kept")
    assert kept["kept"] == [f"move: {STANDS}"]
    (finished,) = of_event(outcome.journal, "run_finished")
    assert finished["status"] == "failed-forward"


def test_a_run_that_fails_before_the_move_finished_is_rolled_back(engine_for: EngineFactory, world: World) -> None:
    move = dataclasses.replace(setter("move", "b", to="on", verify=reads("c", at_least=5)), kept_once_done=STANDS)
    engine = engine_for(toy_runbook(setter("a", "a", to=7), move, health=reads("errors", at_most=0.01)))

    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "rolled-back", outcome.reason
    assert "not taken back" not in outcome.reason
    assert (world.values["a"], world.values["b"]) == (2, "off")
