"""The engine running toy runbooks: act and verify, refuse before acting, and roll back to the planned state.

Real clock, short timeouts: a failing toy gate times out after STEP_TIMEOUT seconds.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runbooks.engine.locking import run_of
from runbooks.engine.planning import Approval, make_plan
from runbooks.engine.spec import Context, Param
from runbooks.errors import (
    ApprovalError,
    FreezeActiveError,
    LiveStateChangedError,
    LockHeldError,
    RunbookError,
    TransientError,
)
from tests.runbooks.conftest import (
    OPERATOR,
    EngineFactory,
    InMemoryLock,
    SettableFreeze,
    World,
    approved_plan,
    events,
    gate,
    in_order,
    of_event,
    only_journal,
    reads,
    setter,
    toy_runbook,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _p99(world: World) -> float:
    """Latency breaks while `b` is on: the toy's way of making a step make things worse."""
    return 9.0 if world.values["b"] == "on" else 0.1


def _p99_gate() -> Any:
    return gate("p99", _p99, at_most=1.0)


def _raise(exc: BaseException) -> Any:
    def hook(_: Any) -> None:
        raise exc

    return hook


# --- A run that succeeds ----------------------------------------------------------------------


def test_run_applies_every_step_in_order_and_journals_it(
    engine_for: EngineFactory, world: World, lock: InMemoryLock
) -> None:
    runbook = toy_runbook(
        setter("a", "a", to=lambda context, _: context.params["to"], verify=reads("a", at_least=5)),
        setter("b", "b", to="on"),
        health=reads("errors", at_most=0.01),
        params=(Param("to", "target", kind=int),),
    )
    engine = engine_for(runbook, params={"to": 5})
    plan, approval = approved_plan(engine)
    outcome = engine.run(plan, approval)

    assert outcome.status == "succeeded"
    assert outcome.rollback_seconds is None
    assert world.values["a"] == 5
    assert world.values["b"] == "on"
    assert world.order("apply") == ["a", "b"]
    assert world.order("restore") == []
    seen = events(outcome.journal)
    assert seen[0] == "run_started"
    assert in_order(
        seen,
        [
            *("run_started", "lock_acquired"),
            *("step_started", "step_applied", "step_verified", "step_done"),
            *("step_started", "step_applied", "step_done"),
            *("run_verified", "run_finished", "lock_released"),
        ],
    )
    assert "rollback_started" not in seen
    (finished,) = of_event(outcome.journal, "run_finished")
    assert finished["status"] == "succeeded"
    (started,) = of_event(outcome.journal, "run_started")
    assert started["operator"] == OPERATOR
    assert started["plan"]["digest"] == plan.digest
    assert started["approval"]["planDigest"] == plan.digest
    assert [(r["step"], r["before"], r["target"]) for r in of_event(outcome.journal, "step_started")] == [
        ("a", 2, 5),
        ("b", "off", "on"),
    ]
    assert [r["observed"] for r in of_event(outcome.journal, "step_done")] == [5, "on"]
    # Held by this runner of this run, not by the operator's name.
    assert [(run_of(holder), ttl, force) for holder, ttl, force in lock.acquisitions] == [
        (outcome.run_id, engine.lock_ttl, False)
    ]
    assert lock.acquisitions[0][0].startswith(f"{OPERATOR}/")
    assert lock.releases == 1
    assert lock.holder is None


def test_reporter_is_told_every_journal_record(engine_for: EngineFactory) -> None:
    told: list[str] = []
    engine = engine_for(toy_runbook(setter("a", "a", to=5)), report=lambda record: told.append(record["event"]))
    outcome = engine.run(*approved_plan(engine))
    assert told == events(outcome.journal)


def test_a_step_already_at_its_planned_target_is_skipped(engine_for: EngineFactory, world: World) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=2), setter("b", "b", to="on")))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    assert world.calls("apply", "a") == 0
    assert world.calls("apply", "b") == 1
    (skipped,) = of_event(outcome.journal, "step_skipped")
    assert skipped["step"] == "a"


def test_transient_errors_are_retried_until_the_step_succeeds(engine_for: EngineFactory, world: World) -> None:
    failures = [TransientError("429 throttled"), TransientError("503 unavailable")]

    def flaky(_: Any) -> None:
        if failures:
            raise failures.pop(0)

    world.before_apply["a"] = flaky
    engine = engine_for(toy_runbook(setter("a", "a", to=5, retries=3, timeout=2.0)))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    assert world.calls("apply", "a") == 3
    assert world.values["a"] == 5


def test_a_step_declared_with_no_attempts_is_refused_and_one_attempt_acts_once(
    engine_for: EngineFactory, world: World
) -> None:
    # `retries` counts attempts; zero attempts would be a step journaled done but never applied.
    with pytest.raises(ValueError, match=r"step 'a': retries must be >= 1 \(the number of attempts"):
        setter("a", "a", to=5, retries=0)
    engine = engine_for(toy_runbook(setter("a", "a", to=5, retries=1)))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    assert world.calls("apply", "a") == 1
    assert world.values["a"] == 5


def test_a_step_with_one_attempt_is_not_retried_on_a_transient_error(engine_for: EngineFactory, world: World) -> None:
    world.before_apply["a"] = _raise(TransientError("503 unavailable"))
    engine = engine_for(toy_runbook(setter("a", "a", to=5, retries=1, timeout=2.0)))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert world.calls("apply", "a") == 1
    assert "(gave up after 1 attempt)" in outcome.reason


# --- Failures roll back -----------------------------------------------------------------------


def test_failed_verification_rolls_back_in_reverse_to_the_planned_state(
    engine_for: EngineFactory, world: World
) -> None:
    def meanwhile(_: Any) -> None:
        world.values["a"] = 7  # `a` moved on after its step finished: rollback must not pin this

    world.before_apply["b"] = meanwhile
    runbook = toy_runbook(
        setter("a", "a", to=5, verify=reads("a", at_least=5)),
        setter("b", "b", to="on", verify=_p99_gate()),
        setter("c", "c", to=3),
        health=_p99_gate(),
    )
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "rolled-back"
    assert world.values["a"] == 2
    assert world.values["b"] == "off"
    assert world.values["c"] == 1
    assert world.calls("apply", "c") == 0
    assert world.order("restore") == ["b", "a"]
    assert [value for action, _, value in world.log if action == "restore"] == ["off", 2]
    assert "b: verification fail" in outcome.reason
    assert "threshold <= 1" in outcome.reason
    assert outcome.rollback_seconds is not None
    assert 0 < outcome.rollback_seconds < 2

    journal = outcome.journal
    assert in_order(
        events(journal),
        [
            *("step_verified", "rollback_started"),
            *("rollback_step", "rollback_step_done", "rollback_step", "rollback_step_done"),
            *("rollback_done", "run_finished", "lock_released"),
        ],
    )
    (verified_b,) = [r for r in of_event(journal, "step_verified") if r["step"] == "b"]
    assert verified_b["gate"]["verdict"] == "fail"
    assert verified_b["gate"]["value"] == 9.0
    assert verified_b["gate"]["query"] == "toy:p99"
    (rollback,) = of_event(journal, "rollback_started")
    assert rollback["steps"] == ["b", "a"]
    assert [(r["step"], r["target"]) for r in of_event(journal, "rollback_step")] == [("b", "off"), ("a", 2)]
    (done,) = of_event(journal, "rollback_done")
    assert done["seconds"] > 0
    assert done["failures"] == []
    assert done["gate"]["verdict"] == "pass"
    assert done["gate"]["query"] == "toy:p99"
    assert done["gate"]["value"] == 0.1
    (finished,) = of_event(journal, "run_finished")
    assert finished["status"] == "rolled-back"
    assert finished["rollback_seconds"] == pytest.approx(outcome.rollback_seconds, abs=0.001)


def test_rollback_without_a_restore_applies_the_planned_state(engine_for: EngineFactory, world: World) -> None:
    runbook = toy_runbook(setter("b", "b", to="on", verify=_p99_gate(), own_restore=False))
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert world.values["b"] == "off"
    assert [value for action, _, value in world.log if action == "apply"] == ["on", "off"]


def test_inconclusive_verification_rolls_back(engine_for: EngineFactory, world: World) -> None:
    runbook = toy_runbook(setter("a", "a", to=5, verify=reads("queue_depth", at_most=100)))
    engine = engine_for(runbook)
    start = time.monotonic()
    outcome = engine.run(*approved_plan(engine))
    assert time.monotonic() - start >= 0.3  # it polled for the whole timeout before giving up
    assert outcome.status == "rolled-back"
    assert world.values["a"] == 2
    (verified,) = of_event(outcome.journal, "step_verified")
    assert verified["gate"]["verdict"] == "inconclusive"
    assert verified["gate"]["value"] is None
    assert "verification inconclusive" in outcome.reason


def test_inconclusive_verification_journals_its_threshold(engine_for: EngineFactory) -> None:
    # "Every gate journals the resolved query, the raw values and the threshold."
    engine = engine_for(toy_runbook(setter("a", "a", to=5, verify=reads("queue_depth", at_most=100))))
    outcome = engine.run(*approved_plan(engine))
    (verified,) = of_event(outcome.journal, "step_verified")
    assert "<= 100" in json.dumps(verified["gate"])


def test_verification_passing_late_within_the_timeout_is_a_pass(engine_for: EngineFactory, world: World) -> None:
    readings = iter([None, float("nan"), 50.0])
    runbook = toy_runbook(
        setter("a", "a", to=5, timeout=1.0, verify=gate("queue", lambda _: next(readings), at_most=100))
    )
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    (verified,) = of_event(outcome.journal, "step_verified")
    assert verified["gate"]["value"] == 50.0


def test_failing_health_gate_at_the_end_is_not_a_success(engine_for: EngineFactory, world: World) -> None:
    # Each step's own gate passes, but the service is unhealthy afterwards: that must not be "succeeded".
    runbook = toy_runbook(
        setter("a", "a", to=5, verify=reads("a", at_least=5)),
        setter("b", "b", to="on"),
        health=_p99_gate(),
    )
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    (verified,) = of_event(outcome.journal, "run_verified")
    assert verified["gate"]["verdict"] == "fail"
    assert outcome.status != "succeeded"
    assert outcome.status == "rolled-back"
    assert world.values["b"] == "off"


def test_an_inconclusive_health_gate_at_the_end_is_not_a_success(engine_for: EngineFactory, world: World) -> None:
    # A service whose health cannot be read after the run has not been shown to recover: no data is not a pass.
    errors = gate("errors", lambda w: None if w.values["b"] == "on" else 0.0, at_most=0.01)
    runbook = toy_runbook(setter("a", "a", to=5, verify=reads("a", at_least=5)), setter("b", "b", to="on"),
                          health=errors)  # fmt: skip
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    (verified,) = of_event(outcome.journal, "run_verified")
    assert verified["gate"]["verdict"] == "inconclusive"
    assert outcome.status == "rolled-back"
    assert "health gate inconclusive after 0.3 s: errors: no data" in outcome.reason
    assert (world.values["a"], world.values["b"]) == (2, "off")
    (done,) = of_event(outcome.journal, "rollback_done")
    assert done["gate"]["verdict"] == "pass", "once rolled back, the gate reads again and passes"


@pytest.mark.parametrize(
    ("error", "reason"),
    [(RuntimeError("boom"), "RuntimeError: boom"), (RunbookError("403 forbidden: patch hpa"), "403 forbidden")],
    ids=["exception", "runbook-error"],
)
def test_a_step_that_raises_is_not_retried_and_everything_begun_rolls_back(
    engine_for: EngineFactory, world: World, error: Exception, reason: str
) -> None:
    world.before_apply["b"] = _raise(error)
    runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on"), setter("c", "c", to=3))
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert reason in outcome.reason
    assert world.calls("apply", "b") == 1
    assert world.calls("apply", "c") == 0
    # b raised before changing anything: there is nothing to restore there, only a.
    assert world.order("restore") == ["a"]
    skipped = [r["step"] for r in of_event(outcome.journal, "rollback_step_done") if r.get("skipped")]
    assert skipped == ["b"]
    assert (world.values["a"], world.values["b"], world.values["c"]) == (2, "off", 1)


def test_transient_errors_that_persist_exhaust_the_retries_then_roll_back(
    engine_for: EngineFactory, world: World
) -> None:
    world.before_apply["a"] = _raise(TransientError("503 unavailable"))
    engine = engine_for(toy_runbook(setter("a", "a", to=5, retries=2, timeout=2.0)))
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert world.calls("apply", "a") == 2
    assert "503 unavailable" in outcome.reason
    assert world.values["a"] == 2


def test_ctrl_c_inside_a_step_rolls_back(engine_for: EngineFactory, world: World) -> None:
    world.before_apply["b"] = _raise(KeyboardInterrupt())
    runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on"), health=_p99_gate())
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert "cancelled" in outcome.reason
    assert world.order("restore") == ["a"]  # b was interrupted before it changed anything
    assert (world.values["a"], world.values["b"]) == (2, "off")
    (finished,) = of_event(outcome.journal, "run_finished")
    assert finished["status"] == "rolled-back"


def test_a_failing_rollback_step_is_reported_with_what_to_undo_and_the_others_still_restored(
    engine_for: EngineFactory, world: World
) -> None:
    world.before_restore["b"] = _raise(RuntimeError("409 conflict on configmap"))
    runbook = toy_runbook(
        setter("a", "a", to=5),
        setter("b", "b", to="on"),
        setter("c", "c", to=3, verify=reads("c", at_least=99)),
    )
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rollback-failed"
    assert world.order("restore") == ["c", "b", "a"]
    assert world.values["a"] == 2
    assert world.values["c"] == 1
    assert world.values["b"] == "on"
    assert "b: RuntimeError: 409 conflict" in outcome.reason
    (failed,) = of_event(outcome.journal, "rollback_step_failed")
    assert failed["step"] == "b"
    assert "409 conflict" in failed["error"]
    assert '"off"' in failed["undo"]
    (done,) = of_event(outcome.journal, "rollback_done")
    assert done["failures"] == ["b: RuntimeError: 409 conflict on configmap"]
    assert [r["step"] for r in of_event(outcome.journal, "rollback_step_done")] == ["c", "a"]


def test_a_rollback_after_which_the_service_is_unwell_says_so_but_not_that_something_is_left(
    engine_for: EngineFactory, world: World
) -> None:
    """Every step is back as planned: nothing is 'incomplete' and nothing to undo by hand; the
    reason says the service did not pass its gate (exit 1, not 3)."""
    runbook = toy_runbook(setter("a", "a", to=5, verify=reads("a", at_least=99)), health=reads("errors", at_most=0.01))
    world.values["errors"] = None  # no data: inconclusive, never healthy
    engine = engine_for(runbook, rollback_timeout=0.3)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert world.values["a"] == 2
    assert "incomplete" not in outcome.reason
    assert "undo by hand" not in outcome.reason
    assert "every step was put back, but the health gate did not pass within 0.3 s: errors: no data" in outcome.reason
    (done,) = of_event(outcome.journal, "rollback_done")
    assert done["gate"]["verdict"] == "inconclusive"
    assert done["failures"] == []


def test_losing_the_lock_stops_the_run_before_the_next_step_and_rolls_back(
    engine_for: EngineFactory, world: World, lock: InMemoryLock
) -> None:
    lock.fail_renewals = True

    def slow(_: Any) -> None:
        assert lock.renew_failed.wait(2.0), "the heartbeat never tried to renew the lock"
        time.sleep(0.05)  # let the heartbeat record the loss

    world.before_apply["a"] = slow
    runbook = toy_runbook(setter("a", "a", to=5, timeout=2.0), setter("b", "b", to="on"))
    engine = engine_for(runbook, lock_ttl=0.3)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "rolled-back"
    assert "lost the environment's lock" in outcome.reason
    assert "before b" in outcome.reason
    assert world.calls("apply", "b") == 0
    assert world.values["a"] == 2


def test_the_heartbeat_renews_the_lock_while_the_run_lives(
    engine_for: EngineFactory, world: World, lock: InMemoryLock
) -> None:
    world.before_apply["a"] = lambda _: time.sleep(0.35)
    engine = engine_for(toy_runbook(setter("a", "a", to=5, timeout=2.0)), lock_ttl=0.3)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    assert lock.renewals >= 2


# --- Refusals before acting -------------------------------------------------------------------


def test_live_state_changed_since_the_plan_refuses_and_changes_nothing(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on")))
    plan, approval = approved_plan(engine)
    world.values["b"] = "on"  # an operator already acted
    drifted = copy.deepcopy(world.values)
    with pytest.raises(LiveStateChangedError, match=r"make a new plan:\n  b: planned from \"off\", now \"on\""):
        engine.run(plan, approval)
    assert world.values == drifted
    assert world.log == []
    journal = only_journal(journal_dir)
    assert "step_started" not in events(journal)
    (refused,) = of_event(journal, "run_refused")
    assert "live state changed" in refused["reason"]
    assert lock.holder is None
    assert lock.releases == 1


def test_a_probe_that_cannot_read_live_state_refuses_the_run(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    plan, approval = approved_plan(engine)
    del world.values["a"]
    with pytest.raises(RunbookError, match="cannot read live state before acting: KeyError"):
        engine.run(plan, approval)
    assert world.log == []
    assert of_event(only_journal(journal_dir), "run_refused")


def test_change_freeze_blocks_the_run(
    engine_for: EngineFactory, world: World, freeze: SettableFreeze, lock: InMemoryLock, journal_dir: Path
) -> None:
    freeze.reason = "Black Friday code freeze (set by sre-lead)"
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    with pytest.raises(FreezeActiveError, match=r"Black Friday code freeze.*--override-freeze REASON"):
        engine.run(*approved_plan(engine))
    assert world.log == []
    assert lock.acquisitions == []
    assert of_event(only_journal(journal_dir), "run_refused")


def test_change_freeze_can_be_overridden_with_a_reason_which_is_journaled(
    engine_for: EngineFactory, world: World, freeze: SettableFreeze
) -> None:
    freeze.reason = "Black Friday code freeze"
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    outcome = engine.run(*approved_plan(engine), override_freeze="INC-42: checkout down, approved by cto")
    assert outcome.status == "succeeded"
    assert world.values["a"] == 5
    (overridden,) = of_event(outcome.journal, "freeze_overridden")
    assert overridden["freeze"] == "Black Friday code freeze"
    assert overridden["reason"] == "INC-42: checkout down, approved by cto"
    assert in_order(events(outcome.journal), ["freeze_overridden", "lock_acquired", "step_started"])


def test_an_empty_override_reason_does_not_lift_the_freeze(
    engine_for: EngineFactory, world: World, freeze: SettableFreeze
) -> None:
    freeze.reason = "freeze"
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    with pytest.raises(FreezeActiveError):
        engine.run(*approved_plan(engine), override_freeze="")
    assert world.log == []


def test_a_lock_held_by_another_runner_refuses_naming_the_holder(
    engine_for: EngineFactory, world: World, lock: InMemoryLock, journal_dir: Path
) -> None:
    lock.hold_as("alice@laptop")
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    with pytest.raises(LockHeldError, match=r"held by alice@laptop since .*--break-lock") as caught:
        engine.run(*approved_plan(engine))
    assert caught.value.holder == "alice@laptop"
    assert world.log == []
    assert lock.holder == "alice@laptop"  # the refused runner did not release someone else's lock
    (refused,) = of_event(only_journal(journal_dir), "run_refused")
    assert "alice@laptop" in refused["reason"]


def test_break_lock_takes_a_held_lock_and_journals_it(
    engine_for: EngineFactory, world: World, lock: InMemoryLock
) -> None:
    lock.hold_as("alice@laptop")
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    outcome = engine.run(*approved_plan(engine), break_lock=True)
    assert outcome.status == "succeeded"
    assert world.values["a"] == 5
    assert [(run_of(holder), force) for holder, _, force in lock.acquisitions] == [(outcome.run_id, True)]
    (acquired,) = of_event(outcome.journal, "lock_acquired")
    assert acquired["holder"] == lock.acquisitions[0][0]
    assert acquired["broken"] is True


def test_a_second_runner_is_refused_while_the_first_holds_the_lock(
    engine_for: EngineFactory, world: World, lock: InMemoryLock
) -> None:
    """Even as the same operator on the same host: the lock is the runner's, not the name's."""
    runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on"))
    first = engine_for(runbook)
    second = engine_for(runbook)
    assert first.operator == second.operator
    refusals: list[LockHeldError] = []

    def second_runner_tries(_: Any) -> None:
        with pytest.raises(LockHeldError) as caught:
            second.run(*approved_plan(second))
        refusals.append(caught.value)

    world.before_apply["b"] = second_runner_tries
    plan, approval = approved_plan(first)
    outcome = first.run(plan, approval)
    assert outcome.status == "succeeded"
    assert [run_of(refusal.holder) for refusal in refusals] == [outcome.run_id]
    assert world.calls("apply", "a") == 1


def test_an_unapproved_plan_is_refused_before_a_journal_is_written(
    engine_for: EngineFactory, world: World, journal_dir: Path
) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    plan, _ = approved_plan(engine)
    other = make_plan(toy_runbook(setter("a", "a", to=6)), engine.context)
    with pytest.raises(ApprovalError):
        engine.run(plan, Approval.of(other, approved_by=OPERATOR, how="--yes"))
    expired = Approval(plan.digest, OPERATOR, "--yes", expires_at=time.time() - 1)
    with pytest.raises(ApprovalError, match="expired"):
        engine.run(plan, expired)
    assert world.log == []
    assert not journal_dir.exists() or not list(journal_dir.iterdir())


def test_a_plan_for_another_environment_is_refused(engine_for: EngineFactory, world: World) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    prod_plan = make_plan(engine.runbook, Context(env="prod", params={}, ports=world))
    with pytest.raises(RunbookError, match="is for toy in prod, not this run"):
        engine.run(prod_plan, Approval.of(prod_plan, approved_by=OPERATOR, how="--yes"))
    assert world.log == []


# --- Destructive steps re-check their trigger -------------------------------------------------


@pytest.mark.parametrize("load", [20.0, None], ids=["load-fell", "no-data"])
def test_destructive_step_whose_trigger_no_longer_holds_stops_without_acting(
    engine_for: EngineFactory, world: World, load: float | None
) -> None:
    runbook = toy_runbook(
        setter("a", "a", to=5),
        setter("drain", "c", to=0, destructive=True),
        trigger=reads("load", at_least=100),
    )
    engine = engine_for(runbook)
    plan, approval = approved_plan(engine)
    world.values["load"] = load  # the surge is over (or the metric went away) after the plan was made
    outcome = engine.run(plan, approval)
    assert outcome.status == "stopped"
    assert world.calls("apply", "drain") == 0
    assert world.values["c"] == 1
    assert "trigger no longer holds before drain" in outcome.reason
    (stopped,) = of_event(outcome.journal, "run_stopped")
    assert stopped["step"] == "drain"
    assert stopped["trigger"]["verdict"] in {"fail", "inconclusive"}
    assert stopped["completed"] == ["a"]
    assert [r["step"] for r in of_event(outcome.journal, "step_started")] == ["a"]
    # Stopping puts back what the run changed before it: no half-applied runbook is left behind.
    assert [r["step"] for r in of_event(outcome.journal, "rollback_step_done")] == ["a"]
    assert world.values["a"] != 5


def test_destructive_step_whose_trigger_still_holds_acts(engine_for: EngineFactory, world: World) -> None:
    runbook = toy_runbook(setter("drain", "c", to=0, destructive=True), trigger=reads("load", at_least=100))
    engine = engine_for(runbook)
    outcome = engine.run(*approved_plan(engine))
    assert outcome.status == "succeeded"
    assert world.values["c"] == 0


# --- Cancel by SIGTERM ------------------------------------------------------------------------

_SIGTERM_RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from runbooks.engine.run import Engine
    from runbooks.engine.spec import Context
    from tests.runbooks.conftest import InMemoryLock, SettableFreeze, World, approved_plan, setter, toy_runbook

    ready = Path(sys.argv[2])
    world = World({"a": 2, "b": "off"})
    world.before_apply["b"] = lambda _: (ready.touch(), time.sleep(30))
    runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on", timeout=60))
    engine = Engine(runbook=runbook, context=Context(env="dev", params={}, ports=world),
                    journal_dir=Path(sys.argv[1]), lock=InMemoryLock(), freeze=SettableFreeze(), operator="op")
    engine.run(*approved_plan(engine))
    """
)


def test_sigterm_during_a_step_rolls_back(tmp_path: Path) -> None:
    # "Rollback always runs ... on cancel (Ctrl-C / SIGTERM)": a runner stopped by SIGTERM must roll back.
    journal_dir, ready = tmp_path / "runs", tmp_path / "ready"
    script = tmp_path / "runner.py"
    script.write_text(_SIGTERM_RUNNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    process = subprocess.Popen([sys.executable, str(script), str(journal_dir), str(ready)], cwd=PROJECT_DIR, env=env)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert process.poll() is None, "the runner exited before reaching step b"
            assert time.monotonic() < deadline, "the runner never reached step b"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    journal = only_journal(journal_dir)
    assert "rollback_done" in events(journal)
    (finished,) = of_event(journal, "run_finished")
    assert finished["status"] == "rolled-back"


def test_a_step_that_undid_its_own_work_before_raising_counts_that_in_the_rollback_time(
    engine_for: EngineFactory, world: World
) -> None:
    class StoppedAfterUndoingError(RunbookError):
        def __init__(self) -> None:
            super().__init__("stopped; the batch in flight was rolled back")
            self.failed_at = time.monotonic()
            time.sleep(0.3)  # the step's own rollback, before the engine hears of the failure

    def stop(_: Any) -> None:
        raise StoppedAfterUndoingError()

    world.before_apply["b"] = stop
    engine = engine_for(toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on")))
    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "rolled-back"
    assert outcome.rollback_seconds is not None and outcome.rollback_seconds >= 0.3


def test_a_step_may_journal_its_progress_as_notes(engine_for: EngineFactory, world: World) -> None:
    engine = engine_for(toy_runbook(setter("a", "a", to=5)))
    world.before_apply["a"] = lambda _: engine.context.note("batch 1 of 2 done")
    outcome = engine.run(*approved_plan(engine))

    assert outcome.status == "succeeded"
    assert [r["text"] for r in of_event(outcome.journal, "step_note")] == ["batch 1 of 2 done"]
