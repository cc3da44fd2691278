"""A step whose change is a person's to make (a `pulumi up` where no Pulumi CLI is installed): the
run ends "succeeded, manual step pending" with the command, in the outcome and the journal, never
as a plain success; a run without such a step is unaffected."""

from __future__ import annotations

from typing import Any

from runbooks.engine.spec import Context, LeftToOperator, Step
from tests.runbooks.conftest import (
    EngineFactory,
    World,
    approved_plan,
    of_event,
    reads,
    setter,
    toy_runbook,
)

COMMAND = "pulumi up -s test --yes"


def _left_to_a_person(world: World) -> Step:
    def observe(context: Context) -> Any:
        return {"pulumiUp": "not run"}

    def apply(context: Context, target: Any) -> LeftToOperator | None:
        world.log.append(("apply", "infra", target))
        return LeftToOperator(COMMAND, "no Pulumi CLI here")

    return Step("infra", "apply infrastructure changes", observe, lambda c, before: {"pulumiUp": COMMAND}, apply,
                restore=lambda context, before: None)  # fmt: skip


def test_a_run_with_a_step_left_to_a_person_says_so_and_names_the_command(
    engine_for: EngineFactory, world: World
) -> None:
    runbook = toy_runbook(setter("a", "a", to=7), _left_to_a_person(world), health=reads("errors", at_most=0.01))
    engine = engine_for(runbook)

    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "succeeded-manual-pending"
    assert outcome.pending == (COMMAND,)
    assert COMMAND in outcome.reason
    assert world.values["a"] == 7, "the steps a runbook can do are done"
    (left,) = of_event(outcome.journal, "step_left_to_operator")
    assert (left["step"], left["command"], left["why"]) == ("infra", COMMAND, "no Pulumi CLI here")
    (finished,) = of_event(outcome.journal, "run_finished")
    assert (finished["status"], finished["pending"]) == ("succeeded-manual-pending", [COMMAND])


def test_a_run_whose_steps_all_act_plainly_succeeds(engine_for: EngineFactory, world: World) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=7), health=reads("errors", at_most=0.01)))

    outcome = engine.run(*approved_plan(engine))

    assert (outcome.status, outcome.pending) == ("succeeded", ())
    (finished,) = of_event(outcome.journal, "run_finished")
    assert finished["pending"] == []


def test_a_step_left_to_a_person_does_not_hide_a_failed_health_gate(engine_for: EngineFactory, world: World) -> None:
    world.values["errors"] = 0.5  # the service never recovers
    runbook = toy_runbook(setter("a", "a", to=7), _left_to_a_person(world), health=reads("errors", at_most=0.01))
    engine = engine_for(runbook)

    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "rolled-back"
    assert world.values["a"] == 2
