"""A plan: what each step would change, from live state, pinned and hashed; and the approval of one plan.

The plan is made by observing, never by acting. Each step's observed state is both what `run`
checks is still true before acting and the target of its rollback, so the rollback target is
fixed when the plan is made, not when things are already going wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from runbooks.engine.spec import Context, Runbook
from runbooks.errors import ApprovalError, TransientError

__all__ = ["APPROVAL_TTL", "Approval", "Plan", "PlannedStep", "canonical", "changed_since", "make_plan"]

APPROVAL_TTL = 15 * 60.0
"""Seconds an approval (and a saved plan) stays good: live state drifts during an incident."""


@dataclass(frozen=True)
class PlannedStep:
    name: str
    summary: str
    before: Any
    """Observed when the plan was made; the rollback target."""
    after: Any
    """What the step will set."""

    @property
    def changes(self) -> bool:
        return canonical(self.before) != canonical(self.after)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class Plan:
    runbook: str
    env: str
    params: Mapping[str, Any]
    steps: tuple[PlannedStep, ...]
    made_at: float
    """Unix time the live state was read."""
    basis: Mapping[str, Any] = field(default_factory=dict)
    """What the targets were computed from (`Runbook.basis`), measured when the plan was made."""

    @property
    def digest(self) -> str:
        """Names this plan: same runbook, env, parameters and planned changes, same digest."""
        body = {
            "runbook": self.runbook,
            "env": self.env,
            "params": dict(self.params),
            "steps": [step.to_dict() for step in self.steps],
            "basis": dict(self.basis),
        }
        return hashlib.sha256(canonical(body).encode()).hexdigest()

    def step(self, name: str) -> PlannedStep:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "env": self.env,
            "params": dict(self.params),
            "steps": [step.to_dict() for step in self.steps],
            "basis": dict(self.basis),
            "madeAt": self.made_at,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Plan:
        plan = cls(
            runbook=raw["runbook"],
            env=raw["env"],
            params=dict(raw["params"]),
            steps=tuple(PlannedStep(**step) for step in raw["steps"]),
            made_at=float(raw["madeAt"]),
            basis=dict(raw.get("basis") or {}),
        )
        if "digest" in raw and raw["digest"] != plan.digest:
            raise ApprovalError(f"saved plan {raw['digest'][:12]} does not match its contents; make a new plan")
        return plan


def _read(read: Callable[[], Any], *, attempts: int = 3, delay: float = 0.5) -> Any:
    """A read of live state, retried on transient errors (a conflict, a 503, throttling)."""
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except TransientError:
            if attempt == attempts:
                raise
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def make_plan(runbook: Runbook, context: Context) -> Plan:
    """Measure the runbook's basis, observe every step and work out its target. Changes nothing."""
    basis = dict(_read(partial(runbook.basis, context))) if runbook.basis is not None else {}
    context = dataclasses.replace(context, basis=basis)
    steps = []
    for step in runbook.steps:
        before = _read(partial(step.observe, context))
        after = _read(partial(step.desired, context, before))
        steps.append(PlannedStep(step.name, step.summary, before, after))
    return Plan(runbook.name, context.env, dict(context.params), tuple(steps), time.time(), basis)


def changed_since(runbook: Runbook, context: Context, plan: Plan, *, steps: set[str] | None = None) -> list[str]:
    """Steps (all, or those named) whose live state no longer matches the plan: one line each."""
    drift = []
    for step in runbook.steps:
        if steps is not None and step.name not in steps:
            continue
        now = _read(partial(step.observe, context))
        planned = plan.step(step.name).before
        if canonical(now) != canonical(planned):
            drift.append(f"{step.name}: planned from {_short(planned)}, now {_short(now)}")
    return drift


@dataclass(frozen=True)
class Approval:
    """Someone approved one plan, by its digest, until a deadline."""

    plan_digest: str
    approved_by: str
    how: str
    """`--yes`, `interactive`, or `not required` (non-prod)."""
    expires_at: float

    @classmethod
    def of(cls, plan: Plan, *, approved_by: str, how: str, ttl: float = APPROVAL_TTL) -> Approval:
        return cls(plan.digest, approved_by, how, plan.made_at + ttl)

    def check(self, plan: Plan, *, now: float | None = None) -> None:
        if self.plan_digest != plan.digest:
            raise ApprovalError(
                f"the approval names plan {self.plan_digest[:12]}, not {plan.digest[:12]}; approve the plan you run"
            )
        moment = time.time() if now is None else now
        if moment > self.expires_at:
            age = moment - plan.made_at
            raise ApprovalError(
                f"plan {plan.digest[:12]} was made {age / 60:.0f} min ago and its approval expired; "
                "make a new plan (`peakguard runbook plan ...`)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"planDigest": self.plan_digest, "approvedBy": self.approved_by, "how": self.how,
                "expiresAt": self.expires_at}  # fmt: skip


def canonical(value: Any) -> str:
    """One text per JSON value (sorted keys): what plans hash and states are compared by."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _short(value: Any, limit: int = 100) -> str:
    text = canonical(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
