"""Running a plan: lock, check, act, verify, and on any failure roll back what was done, verified.

The order of a run:
1. the change freeze (unless overridden with a reason), then the environment's lock, renewed by
   a heartbeat while the run lives;
2. the approval must name this plan and be in date; the live state must still be what the plan
   saw, else the run refuses and asks for a new plan;
3. each step: re-check the trigger if the step is destructive, apply (retrying transient errors),
   then poll its gate until it passes or the step's timeout runs out. A gate that cannot read its
   data is inconclusive, which is not a pass. A watched step (a chaos experiment) then reads its
   watch's gate until the change ends by itself, and fails at the first failed reading;
4. on a failed or timed-out verification, an error, Ctrl-C or SIGTERM, or a trigger that no
   longer holds before a destructive step (status `stopped`): roll back every step that
   began, in reverse, to the state the plan observed, then poll the runbook's health gate; the
   time from the failure to a passing health gate is journaled and reported.

Every transition is written to the journal before the next begins, so `resume` continues a run
that was killed at any point without redoing a finished step, and can still roll back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from runbooks import deadlines
from runbooks.engine.journal import Journal, new_run_id
from runbooks.engine.locking import FreezeSource, Heartbeat, Lock, LockInfo, run_of, runner_identity
from runbooks.engine.planning import Approval, Plan, PlannedStep, canonical, changed_since
from runbooks.engine.spec import Context, Gate, Judgement, LeftToOperator, Runbook, Step
from runbooks.errors import FreezeActiveError, LiveStateChangedError, LockHeldError, RunbookError, TransientError

__all__ = ["Engine", "Outcome", "Reporter", "sigterm_as_interrupt"]

Status = Literal["succeeded", "succeeded-manual-pending", "rolled-back", "rollback-failed", "failed-forward", "stopped"]
"""`succeeded-manual-pending`: every step done and verified, but a step left its change to a person
(spec.LeftToOperator); the outcome's `pending` says what to run. `failed-forward`: the run failed
after a step that cannot be taken back had finished (spec.Step.kept_once_done): the rest was put
back, that step's work stands, and the reason says what a person must decide."""
Reporter = Callable[[dict[str, Any]], None]
"""Told of every journal record as it is written (live progress)."""


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: Status
    journal: Path
    reason: str
    """Why it ended the way it did, in one line."""
    seconds: float
    rollback_seconds: float | None
    """From the failure to a passing health gate after rollback; None if nothing was rolled back."""
    pending: tuple[str, ...] = ()
    """Commands a person still has to run (status `succeeded-manual-pending`)."""


class _StepFailedError(Exception):
    """A step failed; carries the one-line reason into the rollback."""


@dataclass
class Engine:
    runbook: Runbook
    context: Context
    journal_dir: Path
    lock: Lock
    freeze: FreezeSource
    operator: str
    report: Reporter = lambda record: None
    lock_ttl: float = 30.0
    """Seconds the lock lasts without renewal; the heartbeat renews it every third of that."""
    rollback_timeout: float = 30.0
    """Seconds the health gate may take to pass after a rollback (the seed's goal: 30 s)."""
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    # --- Entry points ------------------------------------------------------------------

    def run(
        self, plan: Plan, approval: Approval, *, override_freeze: str | None = None, break_lock: bool = False
    ) -> Outcome:
        """Carry out an approved plan. Raises before acting (freeze, lock, approval, drift)."""
        approval.check(plan)
        if plan.runbook != self.runbook.name or plan.env != self.context.env:
            raise RunbookError(f"plan {plan.digest[:12]} is for {plan.runbook} in {plan.env}, not this run")
        journal = Journal.create(self.journal_dir, new_run_id(self.context.env, self.runbook.name))
        self.context = dataclasses.replace(
            self.context,
            run_id=journal.run_id,
            planned={step.name: step.after for step in plan.steps},
            note=partial(self._note, journal),
            basis=plan.basis,
        )
        started = self.clock()
        self._write(journal, "run_started", runbook=self.runbook.name, env=self.context.env, operator=self.operator,
                    plan=plan.to_dict(), approval=approval.to_dict())  # fmt: skip
        try:
            with sigterm_as_interrupt(), self._guard(journal, override_freeze=override_freeze,
                                                    break_lock=break_lock) as heartbeat:  # fmt: skip
                drift = changed_since(self.runbook, self.context, plan)
                if drift:
                    raise LiveStateChangedError(
                        "live state changed since the plan was made; make a new plan:\n  " + "\n  ".join(drift)
                    )
                return self._carry_out(journal, plan, heartbeat, done=set(), begun=[], started=started)
        except RunbookError as exc:
            # Refused before anything changed.
            self._write(journal, "run_refused", reason=str(exc))
            raise
        except Exception as exc:
            # Live state could not even be read: refuse rather than act blind.
            self._write(journal, "run_refused", reason=_describe(exc))
            raise RunbookError(f"cannot read live state before acting: {_describe(exc)}") from exc

    def resume(self, journal: Journal, *, override_freeze: str | None = None, break_lock: bool = False) -> Outcome:
        """Continue a run that was interrupted: finish its rollback, or its remaining steps."""
        started_record = journal.last("run_started")
        if started_record is None:
            raise RunbookError(f"{journal.path}: no run_started record; not a run journal")
        finished = journal.last("run_finished")
        if finished is not None:
            raise RunbookError(f"run {journal.run_id} already ended: {finished['status']} ({finished['reason']})")
        if journal.last("run_refused") is not None:
            raise RunbookError(f"run {journal.run_id} was refused before acting; make a new plan")
        plan = Plan.from_dict(started_record["plan"])
        self.context = dataclasses.replace(
            self.context,
            run_id=journal.run_id,
            planned={step.name: step.after for step in plan.steps},
            note=partial(self._note, journal),
            basis=plan.basis,
        )
        events = list(journal.records())
        begun = [r["step"] for r in events if r["event"] == "step_started"]
        done = {r["step"] for r in events if r["event"] == "step_done"}
        started = self.clock()
        self._write(journal, "run_resumed", operator=self.operator, done=sorted(done))
        with sigterm_as_interrupt(), self._guard(journal, override_freeze=override_freeze,
                                                break_lock=break_lock) as heartbeat:  # fmt: skip
            rolling_back = journal.last("rollback_started")
            if rolling_back is not None:
                restored = {r["step"] for r in events if r["event"] == "rollback_step_done"}
                pending = [name for name in reversed(begun) if name not in restored]
                return self._roll_back(journal, plan, pending, reason=rolling_back["reason"], failed_at=started,
                                       started=started)  # fmt: skip
            # Steps not begun must still look as planned; the interrupted one may be half done.
            untouched = {step.name for step in self.runbook.steps if step.name not in begun}
            drift = changed_since(self.runbook, self.context, plan, steps=untouched)
            if drift:
                reason = "live state changed since the plan was made:\n  " + "\n  ".join(drift)
                return self._roll_back(journal, plan, list(reversed(begun)), reason=reason, failed_at=started,
                                       started=started)  # fmt: skip
            # A step that began but was not confirmed (killed after its apply, or mid-apply) counts as
            # begun: finished, or rolled back with the rest, never forgotten.
            return self._carry_out(journal, plan, heartbeat, done=done, begun=begun, started=started)

    # --- The run -------------------------------------------------------------------------

    def _carry_out(
        self, journal: Journal, plan: Plan, heartbeat: Heartbeat, *, done: set[str], begun: list[str], started: float
    ) -> Outcome:
        """Run the steps not yet done; `begun` (a resumed run's started steps) is what a rollback undoes."""
        begun = [step.name for step in self.runbook.steps if step.name in done or step.name in begun]
        try:
            for step in self.runbook.steps:
                if step.name in done:
                    continue
                if heartbeat.lost:
                    raise _StepFailedError(
                        f"lost the environment's lock ({heartbeat.lost}); stopping before {step.name}"
                    )
                planned = plan.step(step.name)
                if not planned.changes:
                    self._write(journal, "step_skipped", step=step.name, reason="already as planned")
                    continue
                if step.destructive:
                    assert self.runbook.trigger is not None
                    trigger = self.runbook.trigger.judge(self.context)
                    if trigger.verdict != "pass":
                        # The facts that justified the run are gone (load fell, someone already
                        # acted): do not act on them; put back what this run changed so far.
                        reason = f"trigger no longer holds before {step.name}: {trigger.reason}"
                        self._write(journal, "run_stopped", step=step.name, reason=reason, trigger=trigger.to_dict(),
                                    completed=begun)  # fmt: skip
                        return self._roll_back(journal, plan, list(reversed(begun)), reason=reason,
                                               failed_at=self.clock(), started=started, stopped=True)  # fmt: skip
                if step.name not in begun:
                    begun.append(step.name)
                self._step(journal, step, planned)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 (anything after a change is rolled back)
            # A step that already undid part of its own work before raising says when it failed,
            # so the rollback time counts that undoing too.
            failed_at = self.clock()
            if isinstance(exc, RunbookError) and exc.failed_at is not None:
                failed_at = min(exc.failed_at, failed_at)
            reason = _describe(exc)
            return self._roll_back(journal, plan, list(reversed(begun)), reason=reason, failed_at=failed_at,
                                   started=started)  # fmt: skip
        if self.runbook.health is not None:
            recovery = self._seconds(self.runbook.recovery_timeout)
            with deadlines.until(recovery, what=f"the health gate (recovery timeout {recovery:g} s)"):
                final = self._poll(self.runbook.health, self.clock() + recovery)
            self._write(journal, "run_verified", gate=final.to_dict())
            if final.verdict != "pass":
                # Every step did what it said, yet the service did not recover: undo, do not claim success.
                reason = f"health gate {final.verdict} after {recovery:g} s: {final.reason}"
                return self._roll_back(journal, plan, list(reversed(begun)), reason=reason, failed_at=self.clock(),
                                       started=started)  # fmt: skip
        # From the journal, so a resumed run still reports what an earlier process left to a person.
        pending = tuple(r["command"] for r in journal.records() if r["event"] == "step_left_to_operator")
        if pending:
            return self._finish(journal, "succeeded-manual-pending",
                                "every step applied and verified; left to an operator: " + "; ".join(pending),
                                started, None, pending=pending)  # fmt: skip
        return self._finish(journal, "succeeded", "every step applied and verified", started, None)

    def _step(self, journal: Journal, step: Step, planned: PlannedStep) -> None:
        timeout = self._timeout(step)
        deadline = self.clock() + timeout
        self._write(journal, "step_started", step=step.name, summary=step.summary, before=planned.before,
                    target=planned.after)  # fmt: skip
        # Every API call inside ends by the step's deadline (runbooks.deadlines): a hung call fails
        # the step on time instead of holding the run (and the lock) past it.
        with deadlines.until(timeout, what=f"step {step.name} (timeout {timeout:g} s)"):
            left = self._with_retries(lambda: step.apply(self.context, planned.after), step=step, deadline=deadline)
            if isinstance(left, LeftToOperator):
                self._write(journal, "step_left_to_operator", step=step.name, command=left.command, why=left.why)
            self._write(journal, "step_applied", step=step.name)
            if step.verify is not None:
                verdict = self._poll(step.verify, deadline)
                self._write(journal, "step_verified", step=step.name, gate=verdict.to_dict())
                if verdict.verdict != "pass":
                    raise _StepFailedError(
                        f"{step.name}: verification {verdict.verdict} after {timeout:g} s: {verdict.reason} "
                        f"(query {verdict.reading.query if verdict.reading else '-'}, "
                        f"threshold {step.verify.threshold})"
                    )
            if step.watch is not None:
                self._watch(journal, step, deadline)
        self._write(journal, "step_done", step=step.name, observed=step.observe(self.context))

    def _roll_back(
        self,
        journal: Journal,
        plan: Plan,
        names: list[str],
        *,
        reason: str,
        failed_at: float,
        started: float,
        stopped: bool = False,
    ) -> Outcome:
        by_name = {step.name: step for step in self.runbook.steps}
        failures: list[tuple[str, str]] = []
        left = list(names)
        finished = {r["step"] for r in journal.records() if r["event"] == "step_done"}
        kept = [f"{name}: {by_name[name].kept_once_done}" for name in names
                if name in finished and by_name[name].kept_once_done]  # fmt: skip
        with _finish_despite_one_interrupt() as interrupts:
            # Journaled once a signal can no longer cut the rollback short.
            self._write(journal, "rollback_started", reason=reason, steps=names)
            try:
                for name in names:
                    self._note_interrupt(journal, interrupts)
                    step, before = by_name[name], plan.step(name).before
                    self._write(journal, "rollback_step", step=name, target=before)
                    timeout = self._timeout(step)
                    with deadlines.until(timeout, what=f"rollback of {name} (timeout {timeout:g} s)"):
                        error = self._restore(journal, step, before, deadline=self.clock() + timeout)
                    left.remove(name)
                    if error is not None:
                        failures.append((name, error))
                self._note_interrupt(journal, interrupts)
                gate: Judgement | None = None
                if self.runbook.health is not None:
                    with deadlines.until(self.rollback_timeout, what="the health gate after the rollback"):
                        gate = self._poll(self.runbook.health, self.clock() + self.rollback_timeout)
            except KeyboardInterrupt:
                # The second Ctrl-C or SIGTERM: stop here, and say exactly what is still changed.
                notes = {name: self._undo(by_name[name], plan.step(name).before) for name in left}
                self._write(journal, "rollback_interrupted", left=left, undo=notes)
                why = f"rollback stopped by a second interrupt; left to undo by hand: {'; '.join(notes.values())}"
                return self._finish(journal, "rollback-failed", f"{reason}; {why}", started, self.clock() - failed_at)
        seconds = self.clock() - failed_at
        healthy = gate is None or gate.verdict == "pass"
        self._write(journal, "rollback_done", seconds=round(seconds, 3), gate=gate.to_dict() if gate else None,
                    failures=[f"{name}: {error}" for name, error in failures])  # fmt: skip
        if failures:
            errors = "; ".join(f"{name}: {error}" for name, error in failures)
            undo = "; ".join(self._undo(by_name[name], plan.step(name).before) for name, _ in failures)
            why = f"rollback incomplete: {errors}; left to undo by hand: {undo}"
            return self._finish(journal, "rollback-failed", f"{reason}; {why}", started, seconds)
        if kept:
            # Not "rolled-back": what those steps finished stands, and the service failed with it in place.
            self._write(journal, "rollback_kept", kept=kept)
            gate_said = "" if healthy else f"; the health gate after the rollback: {gate.reason if gate else '-'}"
            why = f"{reason}; not taken back: {'; '.join(kept)}{gate_said}"
            return self._finish(journal, "failed-forward", why, started, seconds)
        if not healthy:
            assert gate is not None
            # Nothing is left to undo: every step is as the plan found it, the service is not well.
            reason = f"{reason}; every step was put back, but the health gate did not pass within "
            reason += f"{self.rollback_timeout:g} s: {gate.reason}"
        return self._finish(journal, "stopped" if stopped else "rolled-back", reason, started, seconds)

    def _note_interrupt(self, journal: Journal, interrupts: _Interrupts) -> None:
        if interrupts.pending():
            why = "a stop half-way would leave more changed; a second signal stops it"
            self._write(journal, "rollback_continues", signal=interrupts.first, why=why)

    def _restore(self, journal: Journal, step: Step, before: Any, *, deadline: float) -> str | None:
        """Put one step back to the planned state and journal how it went; why not, if it could not."""
        if self._already(step, before):
            # The step failed before changing anything (or was undone meanwhile): nothing to restore.
            self._write(journal, "rollback_step_done", step=step.name, skipped="already as planned")
            return None
        try:
            self._with_retries(partial(step.roll_back, self.context, before), step=step, deadline=deadline)
        except Exception as exc:  # noqa: BLE001 (go on restoring the others; report this one)
            self._write(journal, "rollback_step_failed", step=step.name, error=_describe(exc),
                        undo=self._undo(step, before))  # fmt: skip
            return _describe(exc)
        self._write(journal, "rollback_step_done", step=step.name)
        return None

    def _undo(self, step: Step, before: Any) -> str:
        """What a person does to put one step back: the object, the field and the value."""
        if step.undo is not None:
            try:
                return f"{step.name}: {step.undo(self.context, before)}"
            except Exception as exc:  # noqa: BLE001 (the note must not hide the failure it reports)
                return f"{step.name}: set back to {canonical(before)} (the step's undo note failed: {_describe(exc)})"
        return f"{step.name}: set what it changes ({step.summary}) back to {canonical(before)}"

    # --- Helpers -------------------------------------------------------------------------

    def _guard(self, journal: Journal, *, override_freeze: str | None, break_lock: bool) -> _Guard:
        return _Guard(self, journal, override_freeze=override_freeze, break_lock=break_lock)

    def _timeout(self, step: Step) -> float:
        return self._seconds(step.timeout)

    def _seconds(self, value: float | str) -> float:
        """A timeout: seconds, or the name of the parameter that gives them."""
        return float(self.context.params[value]) if isinstance(value, str) else float(value)

    def _already(self, step: Step, before: Any) -> bool:
        try:
            return canonical(step.observe(self.context)) == canonical(before)
        except Exception:  # noqa: BLE001 (cannot tell: restore it anyway)
            return False

    def _poll(self, gate: Gate, deadline: float) -> Judgement:
        """Read the gate until it passes or time runs out. At the deadline, a last reading that could
        not judge (its window cut short by the deadline) does not hide a failure read before it."""
        failed: Judgement | None = None
        while True:
            verdict = gate.judge(self.context)
            if verdict.verdict == "fail":
                failed = verdict
            if verdict.verdict == "pass":
                return verdict
            if self.clock() >= deadline:
                return failed if verdict.verdict == "inconclusive" and failed is not None else verdict
            self.sleep(min(self.runbook.poll_interval, max(0.0, deadline - self.clock())))

    def _watch(self, journal: Journal, step: Step, deadline: float) -> None:
        """Read the watch's gate until the change ends; journal each change of verdict (not every
        reading: a drill may last an hour) and the end."""
        watch = step.watch
        assert watch is not None
        self._write(journal, "step_watch_started", step=step.name, gate=watch.gate.name, threshold=watch.gate.threshold)
        readings, last, blind_since = 0, "", None
        while True:
            try:
                ended = watch.over(self.context)
            except TransientError as exc:
                # Throttled, or not listed yet: a reading that cannot judge, not the change's end.
                blind_since = self.clock() if blind_since is None else blind_since
                if self.clock() - blind_since >= watch.blind_for:
                    raise _StepFailedError(f"{step.name}: cannot tell whether the change still runs: {exc}") from exc
                self.sleep(min(self.runbook.poll_interval, max(0.0, deadline - self.clock())))
                continue
            if ended is not None:
                self._write(journal, "step_watch_ended", step=step.name, ok=ended.ok, how=ended.how, readings=readings)
                if not ended.ok:
                    raise _StepFailedError(f"{step.name}: {ended.how}")
                return
            if self.clock() >= deadline:
                raise _StepFailedError(f"{step.name}: still running at its timeout; stopping it")
            verdict = watch.gate.judge(self.context)
            readings += 1
            if verdict.verdict != last:
                self._write(journal, "step_watch_reading", step=step.name, gate=verdict.to_dict())
                last = verdict.verdict
            if verdict.verdict == "fail":
                raise _StepFailedError(f"{step.name}: {watch.gate.name} broke while watched: {verdict.reason}")
            if verdict.verdict == "inconclusive":
                blind_since = self.clock() if blind_since is None else blind_since
                if self.clock() - blind_since >= watch.blind_for:
                    raise _StepFailedError(
                        f"{step.name}: {watch.gate.name} could not judge for {self.clock() - blind_since:.0f} s "
                        f"({verdict.reason}); a fault nobody can see is stopped"
                    )
            else:
                blind_since = None
            self.sleep(min(self.runbook.poll_interval, max(0.0, deadline - self.clock())))

    def _with_retries(self, action: Callable[[], LeftToOperator | None], *, step: Step, deadline: float) -> Any:
        delay = 0.5
        for attempt in range(1, step.retries + 1):
            try:
                return action()
            except TransientError as exc:
                if attempt == step.retries or self.clock() + delay >= deadline:
                    # Said once, here: the adapters' messages do not promise a retry that is not coming.
                    raise RunbookError(f"{exc} (gave up after {attempt} attempt{'s' * (attempt > 1)})") from exc
                self.sleep(delay)
                delay *= 2
        return None

    def _note(self, journal: Journal, text: str) -> None:
        self._write(journal, "step_note", text=text)

    def _write(self, journal: Journal, event: str, **fields: Any) -> None:
        record = journal.write(event, **fields)
        self.report(record)

    def _finish(
        self,
        journal: Journal,
        status: Status,
        reason: str,
        started: float,
        rollback: float | None,
        *,
        pending: tuple[str, ...] = (),
    ) -> Outcome:
        seconds = self.clock() - started
        self._write(journal, "run_finished", status=status, reason=reason, seconds=round(seconds, 3),
                    rollback_seconds=None if rollback is None else round(rollback, 3),
                    pending=list(pending))  # fmt: skip
        return Outcome(journal.run_id, status, journal.path, reason, seconds, rollback, pending)


class _Guard:
    """Freeze check, lock and heartbeat around a run."""

    def __init__(self, engine: Engine, journal: Journal, *, override_freeze: str | None, break_lock: bool) -> None:
        self._engine = engine
        self._journal = journal
        self._override = override_freeze
        self._break = break_lock
        self._heartbeat: Heartbeat | None = None

    def __enter__(self) -> Heartbeat:
        engine = self._engine
        frozen = engine.freeze.freeze_reason()
        if frozen is not None:
            if not self._override:
                raise FreezeActiveError(
                    f"{engine.context.env} is under a change freeze ({frozen}); runbooks are blocked unless "
                    "`--override-freeze REASON` is given"
                )
            engine._write(self._journal, "freeze_overridden", freeze=frozen, reason=self._override)
        info = self._acquire(runner_identity(operator=engine.operator, run_id=self._journal.run_id))
        engine._write(self._journal, "lock_acquired", holder=info.holder, since=info.since, expires=info.expires,
                      broken=self._break)  # fmt: skip
        self._heartbeat = Heartbeat(engine.lock, interval=engine.lock_ttl / 3).__enter__()
        return self._heartbeat

    def _acquire(self, identity: str) -> LockInfo:
        """The lock; a dead runner of this same run (a resume after `kill -9`) is waited out, not broken."""
        engine = self._engine
        try:
            return engine.lock.acquire(holder=identity, ttl=engine.lock_ttl, force=self._break)
        except LockHeldError as held:
            if run_of(held.holder) != self._journal.run_id:
                raise
            # Its lease lapses within its ttl unless that runner still lives and renews it; then
            # this acquire refuses again, naming it. --break-lock skips the wait.
            wait = min(held.seconds_left if held.seconds_left is not None else engine.lock_ttl, engine.lock_ttl) + 1.0
            engine._write(self._journal, "lock_waiting", holder=held.holder, seconds=round(wait, 1),
                          why="held by an earlier runner of this run; waiting for its lease to lapse")  # fmt: skip
            engine.sleep(max(0.0, wait))
            return engine.lock.acquire(holder=identity, ttl=engine.lock_ttl, force=False)

    def __exit__(self, *_: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.__exit__()
        self._engine.lock.release()
        self._engine._write(self._journal, "lock_released")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a pod or CI stopping the runner) rolls back like Ctrl-C, instead of killing mid-step.

    SIGINT too where it arrives ignored: a shell without job control starts background commands
    with SIGINT ignored (POSIX, "Signals and Error Handling"), and Python then installs no handler,
    so `kill -INT` did nothing to a lab or a runner a script had started with `&`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, signal.default_int_handler)}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Interrupts:
    def __init__(self) -> None:
        self.first: str | None = None
        self._told = False

    def pending(self) -> bool:
        """True once, after the first interrupt arrived (so the rollback journals it once)."""
        if self.first is None or self._told:
            return False
        self._told = True
        return True


@contextlib.contextmanager
def _finish_despite_one_interrupt() -> Iterator[_Interrupts]:
    """During a rollback the first Ctrl-C or SIGTERM is noted, not obeyed: stopping half-way would
    leave more changed than finishing (each step is bounded by its timeout). A second one stops it
    (KeyboardInterrupt), and the rollback journals what is left. A SIGKILL leaves the journal's
    rollback records, from which `resume` finishes the rollback."""
    interrupts = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def handler(signum: int, _: object) -> None:
        if interrupts.first is not None:
            raise KeyboardInterrupt
        interrupts.first = signal.Signals(signum).name
        print(f"peakguard: {interrupts.first} received during the rollback; finishing it "
              "(send it again to stop now)", file=sys.stderr, flush=True)  # fmt: skip

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled (Ctrl-C or SIGTERM)"
    if isinstance(exc, (_StepFailedError, RunbookError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
