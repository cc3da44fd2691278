"""A runner killed at any moment, then resumed, ends where an uninterrupted run would: every step at
its target, or everything back as the plan found it. Never a mix.

Each real runbook (emergency-stop, rebuild, rolling-upgrade, chaos-drill) keeps its shape here (step names and
order, which steps are destructive, which verify, its trigger and health gate) while its steps act
on an in-memory world, so the engine can be killed at every journal record and after every change
it makes, not at a hand-picked list of points. The kill is a BaseException the engine cannot catch,
as SIGKILL would be.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from runbooks.engine.journal import Journal
from runbooks.engine.run import Engine, Outcome
from runbooks.engine.spec import Context, Ended, Runbook, Step, Watch
from runbooks.library import chaos_drill, emergency_stop, rebuild, rolling_upgrade
from tests.runbooks.conftest import (
    OPERATOR,
    POLL,
    InMemoryLock,
    RunnerKilled,
    SettableFreeze,
    World,
    approved_plan,
    only_journal,
    reads,
)

REAL = (emergency_stop.RUNBOOK, rebuild.RUNBOOK, rolling_upgrade.RUNBOOK, chaos_drill.RUNBOOK)
BEFORE, TARGET = 0, 1


class _Killer:
    """Counts the moments a runner could die at (each journal record, each change to the world) and
    kills it at the chosen one."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.seen = 0

    def tick(self, _: Any = None) -> None:
        moment = self.seen
        self.seen += 1
        if moment == self.at:
            raise RunnerKilled


def _mirror(real: Runbook, killer: _Killer, *, failing: str | None) -> Runbook:
    """`real` with each step setting world[step] from 0 to 1; `failing` names a step whose verification never passes."""

    def step(original: Step) -> Step:
        name = original.name

        def observe(context: Context) -> Any:
            return _world(context).values[name]

        def set_to(context: Context, value: Any) -> None:
            _world(context).values[name] = value
            killer.tick()  # right after the change, before the engine journals it

        verify = reads(f"{name}-ok", at_least=1.0) if original.verify is not None or name == failing else None
        watch = None
        if original.watch is not None:
            # chaos-drill's experiment: it runs two readings, then ends by itself.
            def over(context: Context) -> Ended | None:
                values = _world(context).values
                values[f"{name}-watched"] = values.get(f"{name}-watched", 0) + 1
                return Ended(True, "completed") if values[f"{name}-watched"] >= 2 else None

            watch = Watch(reads(f"{name}-ok", at_least=1.0), over, blind_for=1.0)
        # A mirror step can always be put back, so none keeps its finished work (kept_once_done):
        # every failing run here must end whole, rolled back.
        return dataclasses.replace(
            original, observe=observe, desired=lambda context, before: TARGET, apply=set_to, restore=None,
            verify=verify, watch=watch, timeout=0.2, retries=1, kept_once_done=None, undo=None,
        )  # fmt: skip

    return dataclasses.replace(
        real,
        steps=tuple(step(s) for s in real.steps),
        params=(),
        trigger=reads("incident", at_least=1.0) if real.trigger is not None else None,
        health=reads("healthy", at_least=1.0),
        recovery_timeout=0.2,
        poll_interval=POLL,
        explain=None,
        epilogue=None,
        basis=None,
    )


def _world(context: Context) -> World:
    world = context.ports
    assert isinstance(world, World)
    return world


def _fresh_world(real: Runbook, *, failing: str | None) -> World:
    values: dict[str, Any] = {step.name: BEFORE for step in real.steps}
    values.update({f"{step.name}-ok": 1.0 for step in real.steps}, incident=1.0, healthy=1.0)
    if failing is not None:
        values[f"{failing}-ok"] = 0.0
    return World(values)


def _engine(runbook: Runbook, world: World, lock: InMemoryLock, journal_dir: Path, killer: _Killer) -> Engine:
    return Engine(runbook=runbook, context=Context(env="dev", params={}, ports=world), journal_dir=journal_dir,
                  lock=lock, freeze=SettableFreeze(), operator=OPERATOR, report=killer.tick,
                  rollback_timeout=0.2)  # fmt: skip


def _end_state(world: World, real: Runbook) -> list[int]:
    return [world.values[step.name] for step in real.steps]


def _run_to_the_end(real: Runbook, journal_dir: Path, *, failing: str | None, kills: tuple[int | None, ...],
                    incident_on_resume: float) -> tuple[World, Outcome | None]:  # fmt: skip
    """Run, killed at `kills[0]`; each resume killed at the next kill point; the last resume runs free."""
    world = _fresh_world(real, failing=failing)
    lock = InMemoryLock()
    outcome: Outcome | None = None
    for attempt, at in enumerate((*kills, None)):
        killer = _Killer(at)
        engine = _engine(_mirror(real, killer, failing=failing), world, lock, journal_dir, killer)
        try:
            if attempt == 0:
                outcome = engine.run(*approved_plan(engine))
            else:
                journal = Journal.open(journal_dir, only_journal(journal_dir).stem)
                if journal.last("run_finished") is not None:
                    return world, outcome  # it died after it had ended: nothing to resume
                outcome = engine.resume(journal, break_lock=True)  # the operator knows the runner died
            return world, outcome
        except RunnerKilled:
            # The incident may have ended while the runner was dead.
            world.values["incident"] = incident_on_resume
    raise AssertionError("unreachable: the last attempt is never killed")


def _moments(real: Runbook, journal_dir: Path, *, failing: str | None) -> int:
    """How many kill points an uninterrupted run has."""
    world = _fresh_world(real, failing=failing)
    killer = _Killer(None)
    engine = _engine(_mirror(real, killer, failing=failing), world, InMemoryLock(), journal_dir, killer)
    engine.run(*approved_plan(engine))
    return killer.seen


def _check(real: Runbook, world: World, outcome: Outcome | None, where: str) -> None:
    state = _end_state(world, real)
    assert state in ([TARGET] * len(state), [BEFORE] * len(state)), f"{where}: left half-changed: {state}"
    if outcome is not None:
        expected = [TARGET] * len(state) if outcome.status == "succeeded" else [BEFORE] * len(state)
        assert state == expected, f"{where}: {outcome.status} ({outcome.reason}) but the world is {state}"


@pytest.mark.parametrize("real", REAL, ids=[r.name for r in REAL])
@pytest.mark.parametrize("incident_on_resume", [1.0, 0.0], ids=["incident-still-on", "incident-over"])
def test_killed_once_anywhere_and_resumed_ends_as_a_whole_run_or_a_whole_rollback(
    real: Runbook, incident_on_resume: float, tmp_path: Path
) -> None:
    total = _moments(real, tmp_path / "count", failing=None)
    assert total > 3 * len(real.steps), "every step journals several records"
    for at in range(total):
        folder = tmp_path / f"kill-{at}"
        world, outcome = _run_to_the_end(real, folder, failing=None, kills=(at,), incident_on_resume=incident_on_resume)
        _check(real, world, outcome, f"{real.name} killed at moment {at} of {total}")
        if incident_on_resume and outcome is not None:
            assert outcome.status == "succeeded", f"killed at {at}: {outcome.reason}"


@pytest.mark.parametrize("real", REAL, ids=[r.name for r in REAL])
def test_killed_anywhere_in_a_failing_run_or_its_rollback_and_resumed_ends_rolled_back(
    real: Runbook, tmp_path: Path
) -> None:
    failing = real.steps[-1].name  # everything else is changed first, so the rollback has most to undo
    total = _moments(real, tmp_path / "count", failing=failing)
    for at in range(total):
        world, outcome = _run_to_the_end(real, tmp_path / f"kill-{at}", failing=failing, kills=(at,),
                                         incident_on_resume=1.0)  # fmt: skip
        _check(real, world, outcome, f"{real.name} failing at {failing}, killed at moment {at} of {total}")
        assert outcome is None or outcome.status in ("rolled-back", "stopped"), outcome


def test_killed_twice_the_resume_too_still_ends_whole(tmp_path: Path) -> None:
    """The resumed runner dies as well, at every moment of its own: emergency-stop, incident over meanwhile."""
    real = emergency_stop.RUNBOOK
    total = _moments(real, tmp_path / "count", failing=None)
    for first, second in itertools.product(range(0, total, 3), range(0, total, 4)):
        world, outcome = _run_to_the_end(real, tmp_path / f"kill-{first}-{second}", failing=None,
                                         kills=(first, second), incident_on_resume=0.0)  # fmt: skip
        _check(real, world, outcome, f"killed at {first}, then the resume at {second}")


def test_a_mode_switch_killed_after_it_was_applied_is_rolled_back_when_the_incident_is_over(tmp_path: Path) -> None:
    """The reproduction: kill -9 once the journal shows `step_applied mode`, resume after pressure drops."""
    real = emergency_stop.RUNBOOK
    world = _fresh_world(real, failing=None)
    lock = InMemoryLock()
    killer = _Killer(None)

    def die_after_mode_applied(record: dict[str, Any]) -> None:
        if record["event"] == "step_applied" and record.get("step") == "mode":
            raise RunnerKilled

    engine = _engine(_mirror(real, killer, failing=None), world, lock, tmp_path, killer)
    engine.report = die_after_mode_applied
    with pytest.raises(RunnerKilled):
        engine.run(*approved_plan(engine))
    assert world.values["mode"] == TARGET
    world.values["incident"] = 0.0

    resumed = _engine(_mirror(real, killer, failing=None), world, lock, tmp_path, killer)
    outcome = resumed.resume(Journal.open(tmp_path, only_journal(tmp_path).stem), break_lock=True)

    assert outcome.status == "stopped"
    assert world.values["mode"] == BEFORE, "the interrupted mode switch was rolled back with the rest"
    assert _end_state(world, real) == [BEFORE] * len(real.steps)
