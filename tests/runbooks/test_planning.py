"""Plans: made by observing only, named by a digest of what they would change; approvals cover one plan, in date."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from typing import Any

import pytest

from runbooks.engine.planning import APPROVAL_TTL, Approval, Plan, changed_since, make_plan
from runbooks.engine.spec import Context, Param, Runbook
from runbooks.errors import ApprovalError
from tests.runbooks.conftest import ENV, OPERATOR, World, setter, toy_runbook


def _runbook() -> Runbook:
    return toy_runbook(
        setter("a", "a", to=lambda context, before: context.params["to"]),
        setter("b", "b", to="on"),
        params=(Param("to", "target", kind=int),),
    )


def _context(world: World, **params: Any) -> Context:
    return Context(env=ENV, params={"to": 5, **params}, ports=world)


def test_make_plan_changes_nothing(world: World) -> None:
    before = copy.deepcopy(world.values)
    plan = make_plan(_runbook(), _context(world))
    assert world.values == before
    assert world.log == []
    assert [(s.name, s.before, s.after, s.changes) for s in plan.steps] == [("a", 2, 5, True), ("b", "off", "on", True)]
    assert (plan.runbook, plan.env, dict(plan.params)) == ("toy", ENV, {"to": 5})


def test_a_step_already_at_its_target_plans_no_change(world: World) -> None:
    plan = make_plan(_runbook(), _context(world, to=2))
    assert not plan.step("a").changes
    assert plan.step("b").changes


def test_digest_is_stable_for_identical_plans_made_at_different_times(world: World) -> None:
    first = make_plan(_runbook(), _context(world))
    second = make_plan(_runbook(), _context(world))
    second = Plan(second.runbook, second.env, second.params, second.steps, second.made_at + 600)
    assert first.digest == second.digest
    assert len(first.digest) == 64


def test_digest_differs_when_the_parameters_differ(world: World) -> None:
    assert make_plan(_runbook(), _context(world)).digest != make_plan(_runbook(), _context(world, to=6)).digest


def test_digest_differs_when_the_observed_state_differs(world: World) -> None:
    first = make_plan(_runbook(), _context(world))
    world.values["b"] = "partial"
    assert make_plan(_runbook(), _context(world)).digest != first.digest


def test_digest_differs_for_another_environment(world: World) -> None:
    plan = make_plan(_runbook(), _context(world))
    prod = make_plan(_runbook(), Context(env="prod", params={"to": 5}, ports=world))
    assert plan.digest != prod.digest


def test_plan_round_trips_through_its_dict_and_json(world: World) -> None:
    plan = make_plan(_runbook(), _context(world))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.digest == plan.digest


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw: raw["steps"][0].update(after=50),
        lambda raw: raw["steps"][1].update(before="on"),
        lambda raw: raw["params"].update(to=6),
        lambda raw: raw.update(env="prod"),
    ],
    ids=["target", "rollback-target", "params", "env"],
)
def test_a_tampered_plan_is_refused(world: World, tamper: Any) -> None:
    raw = make_plan(_runbook(), _context(world)).to_dict()
    tamper(raw)
    with pytest.raises(ApprovalError, match="does not match its contents; make a new plan"):
        Plan.from_dict(raw)


def test_approval_of_the_plan_is_good_until_it_expires(world: World) -> None:
    plan = make_plan(_runbook(), _context(world))
    approval = Approval.of(plan, approved_by=OPERATOR, how="--yes")
    approval.check(plan)
    approval.check(plan, now=plan.made_at + APPROVAL_TTL - 1)
    assert approval.to_dict()["planDigest"] == plan.digest


def test_approval_refuses_another_plans_digest(world: World) -> None:
    approved = make_plan(_runbook(), _context(world))
    approval = Approval.of(approved, approved_by=OPERATOR, how="--yes")
    other = make_plan(_runbook(), _context(world, to=9))
    with pytest.raises(ApprovalError, match=f"names plan {approved.digest[:12]}, not {other.digest[:12]}"):
        approval.check(other)


def test_expired_approval_is_refused(world: World) -> None:
    plan = make_plan(_runbook(), _context(world))
    approval = Approval.of(plan, approved_by=OPERATOR, how="interactive")
    with pytest.raises(ApprovalError, match=r"made 16 min ago and its approval expired; make a new plan"):
        approval.check(plan, now=plan.made_at + APPROVAL_TTL + 60)


def test_approval_lasts_from_when_the_plan_was_made_not_from_when_it_is_approved(world: World) -> None:
    # A saved plan approved at run time: the live state it pinned is as old as the plan, not the approval.
    made = make_plan(_runbook(), _context(world))
    stale = dataclasses.replace(made, made_at=time.time() - APPROVAL_TTL - 60)
    approval = Approval.of(stale, approved_by=OPERATOR, how="--yes")
    with pytest.raises(ApprovalError, match=r"made 16 min ago and its approval expired; make a new plan"):
        approval.check(stale)
    approval.check(stale, now=stale.made_at + APPROVAL_TTL - 1)
    assert approval.expires_at == stale.made_at + APPROVAL_TTL


def test_approval_with_a_short_ttl_expires_sooner(world: World) -> None:
    plan = make_plan(_runbook(), _context(world))
    approval = Approval.of(plan, approved_by=OPERATOR, how="--yes", ttl=30)
    with pytest.raises(ApprovalError, match="expired"):
        approval.check(plan, now=plan.made_at + 31)


def test_changed_since_lists_only_the_drifted_steps(world: World) -> None:
    runbook, context = _runbook(), _context(world)
    plan = make_plan(runbook, context)
    assert changed_since(runbook, context, plan) == []
    world.values["b"] = "on"
    assert changed_since(runbook, context, plan) == ['b: planned from "off", now "on"']
    assert changed_since(runbook, context, plan, steps={"a"}) == []
    assert world.log == []
