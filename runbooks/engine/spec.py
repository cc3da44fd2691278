"""How a runbook is declared: typed parameters, ordered steps, health gates. Data the engine runs.

A runbook is a Python declaration rather than YAML: its steps are small typed functions (observe,
decide, apply) that mypy checks and tests call directly, and the declaration itself stays data the
engine can print, plan and hash. Each step says in one line what it changes.

A step is safe to run twice: `apply` sets the state to a target (it never adds to what is there),
so a resumed run re-applies an interrupted step without doubling it, and rollback is `apply` of
the state observed when the plan was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runbooks.errors import ParameterError

__all__ = [
    "REQUIRED",
    "Context",
    "Ended",
    "Gate",
    "Judgement",
    "LeftToOperator",
    "Param",
    "Reading",
    "Runbook",
    "Step",
    "Verdict",
    "Watch",
]

Verdict = Literal["pass", "fail", "inconclusive"]
State = Any
"""JSON-able: what a step observed or will set (journaled and hashed into the plan)."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _discard_note(_: str) -> None:
    """Where notes go while planning: nowhere (a plan changes nothing worth journaling)."""


@dataclass(frozen=True)
class Context:
    """What steps see: the environment, the validated parameters, and the ports to act through."""

    env: str
    params: Mapping[str, Any]
    ports: Any
    """The adapters (cluster, cloud, service); each runbook knows the shape it needs."""
    run_id: str = ""
    """Set by the engine once the run's journal exists (empty while planning)."""
    planned: Mapping[str, Any] = field(default_factory=dict)
    """Each step's pinned target by step name, set by the engine for a run: what verification
    probes compare the live state against."""
    note: Callable[[str], None] = _discard_note
    """Journal one line of progress inside a long step (a batch drained, a node removed); set by
    the engine for a run, and shown live."""
    basis: Mapping[str, Any] = field(default_factory=dict)
    """What the plan was computed from (`Runbook.basis`), as measured when it was made; empty
    while the plan's own basis is being measured."""


@dataclass(frozen=True)
class Param:
    name: str
    """Command-line name without dashes, e.g. `to` for `--to`."""
    help: str
    kind: type = str
    """int, float or str."""
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: Any) -> Any:
        """The value from text (the command line) or a plain value; ParameterError says why not."""
        flag = f"--{self.name}"
        if raw is None:
            if self.default is REQUIRED:
                raise ParameterError(f"{flag} is required: {self.help}")
            return self.default
        if isinstance(raw, bool) and self.kind is not bool:
            raise ParameterError(f"{flag}={raw!r} is not a {self.kind.__name__}: {self.help}")
        if self.kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ParameterError(f"{flag}={raw!r} is not a whole number: {self.help}")
        try:
            value = self.kind(raw)
        except (TypeError, ValueError):
            raise ParameterError(f"{flag}={raw!r} is not a {self.kind.__name__}: {self.help}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f"{flag}={raw!r} must be a finite number")
        if self.choices and value not in self.choices:
            raise ParameterError(f"{flag}={raw!r} must be one of {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ParameterError(f"{flag}={raw!r} must be >= {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ParameterError(f"{flag}={raw!r} must be <= {self.maximum:g}")
        return value


@dataclass(frozen=True)
class Reading:
    """What a probe saw: the number judged, the raw data behind it and the query that produced it."""

    value: float | None
    raw: Any = None
    query: str = ""


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    reading: Reading | None
    threshold: str = ""

    def to_dict(self) -> dict[str, Any]:
        reading = self.reading
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "value": reading.value if reading else None,
            "raw": reading.raw if reading else None,
            "query": reading.query if reading else "",
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Gate:
    """A health check with a tolerance. It fails closed: no data, NaN, an empty result or an
    error is `inconclusive`, which never counts as a pass."""

    name: str
    probe: Callable[[Context], Reading]
    at_most: float | None = None
    at_least: float | None = None

    def __post_init__(self) -> None:
        for bound in (self.at_most, self.at_least):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"gate {self.name!r}: threshold {bound} is not a number; it would pass anything")
        if self.at_most is None and self.at_least is None:
            raise ValueError(
                f"gate {self.name!r} needs at_most or at_least: a gate without a threshold passes anything"
            )

    @property
    def threshold(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f">= {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"<= {self.at_most:g}")
        return " and ".join(parts)

    def judge(self, context: Context) -> Judgement:
        verdict = self._judge(context)
        return Judgement(verdict.verdict, verdict.reason, verdict.reading, self.threshold)

    def _judge(self, context: Context) -> Judgement:
        try:
            reading = self.probe(context)
        except Exception as exc:  # noqa: BLE001 (a probe that cannot read is inconclusive, never a pass)
            return Judgement("inconclusive", f"{self.name}: probe failed: {exc}", None)
        value = reading.value
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return Judgement(
                "inconclusive", f"{self.name}: no data ({reading.query or 'probe'} returned {value!r})", reading
            )
        if not math.isfinite(value):
            return Judgement("inconclusive", f"{self.name}: {value} is not a measurement", reading)
        if self.at_most is not None and value > self.at_most:
            return Judgement("fail", f"{self.name}: {value:g} > {self.at_most:g}", reading)
        if self.at_least is not None and value < self.at_least:
            return Judgement("fail", f"{self.name}: {value:g} < {self.at_least:g}", reading)
        return Judgement("pass", f"{self.name}: {value:g} {self.threshold}", reading)


@dataclass(frozen=True)
class Ended:
    """How a watched change ended by itself: `ok` if it ran its course, else why not."""

    ok: bool
    how: str


@dataclass(frozen=True)
class Watch:
    """A change that runs a course after its apply (a chaos experiment): `gate` is read every poll
    interval until `over` reports the change ended. The first `fail` ends the step at once (and the
    rollback stops the change), never waiting for a pass the way verification does. Readings that
    cannot judge count as blindness: past `blind_for` seconds of it, the step fails too, because a
    fault nobody can see must not go on."""

    gate: Gate
    over: Callable[[Context], Ended | None]
    """None while the change runs; how it ended once it has. A TransientError counts as blindness."""
    blind_for: float = 30.0

    def __post_init__(self) -> None:
        if self.blind_for <= 0:
            raise ValueError(f"watch {self.gate.name!r}: blind_for must be positive seconds")


@dataclass(frozen=True)
class LeftToOperator:
    """What a step's `apply` returns when the change is a person's to make (a `pulumi up` on a machine
    without the Pulumi CLI): the run then ends "succeeded, manual step pending", never plainly
    succeeded, and the journal and the summary carry the command."""

    command: str
    why: str


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    """One line: what the step changes."""
    observe: Callable[[Context], State]
    """Read the live state the step would change."""
    desired: Callable[[Context, State], State]
    """The target, from the observed state and the parameters; pinned in the plan."""
    apply: Callable[[Context, State], LeftToOperator | None]
    """Set the live state to a target (idempotent); or say what a person must run to do it."""
    verify: Gate | None = None
    """Polled after `apply` until it passes or `timeout` runs out."""
    watch: Watch | None = None
    """Held after verification until the change ends by itself (within `timeout`); see Watch."""
    restore: Callable[[Context, State], None] | None = None
    """Rollback to the observed state; default: `apply` of it."""
    timeout: float | str = 60.0
    """Seconds for `apply` plus verification before the step counts as failed; or the name of a
    parameter that gives them (e.g. how long new capacity may take to arrive)."""
    retries: int = 3
    """Attempts at `apply` on a TransientError, with backoff."""
    destructive: bool = False
    """Re-check the runbook's trigger before acting: do not act on stale facts."""
    kept_once_done: str | None = None
    """For a step whose finished work a runbook cannot take back (nodes replaced, batch by batch,
    each past its gate): what stays when the run fails after it finished. Its restore still runs
    (to clear what a stop left half-done), and the run ends `failed-forward`, never `rolled-back`."""
    undo: Callable[[Context, State], str] | None = None
    """How a person puts it back by hand when the rollback cannot: (context, observed state) -> the
    object, the field and the value, e.g. `HPA peakguard/model-service-full: spec.minReplicas 2, ...`."""

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"step {self.name!r}: retries must be >= 1 (the number of attempts, the first included)")
        if not isinstance(self.timeout, str) and self.timeout <= 0:
            raise ValueError(f"step {self.name!r}: timeout must be positive")

    def roll_back(self, context: Context, before: State) -> None:
        (self.restore or self.apply)(context, before)


@dataclass(frozen=True)
class Runbook:
    name: str
    summary: str
    steps: tuple[Step, ...]
    params: tuple[Param, ...] = ()
    health: Gate | None = None
    """Must pass at the end of a run (within `recovery_timeout`, else the run rolls back) and after
    a rollback."""
    recovery_timeout: float | str = 60.0
    """Seconds the health gate may take to pass once every step is done; or the name of a parameter
    that gives them."""
    trigger: Gate | None = None
    """The condition that justifies the runbook; must still hold before a destructive step."""
    prod_needs_approval: bool = True
    poll_interval: float = 1.0
    """Seconds between gate readings."""
    notes: Mapping[str, str] = field(default_factory=dict)
    explain: Callable[[str, State], list[str]] | None = None
    """Lines a plan shows under a step beyond its one-line change: (step name, target) -> lines."""
    epilogue: Callable[[Context], str] | None = None
    """What to tell the operator after a run succeeded (e.g. the stack-config change to commit)."""
    basis: Callable[[Context], Mapping[str, Any]] | None = None
    """The facts the plan is computed from, measured once when it is made (the traffic, the
    capacity serving it): shown with the plan, hashed into it, and given to every step and gate
    of the run as `context.basis`, so targets come from one measurement and gates can compare
    with how things were before the run acted."""

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"runbook {self.name}: step names must be unique, got {names}")
        params = {param.name for param in self.params}
        if isinstance(self.recovery_timeout, str) and self.recovery_timeout not in params:
            raise ValueError(f"runbook {self.name}: its recovery timeout comes from unknown --{self.recovery_timeout}")
        for step in self.steps:
            if isinstance(step.timeout, str) and step.timeout not in params:
                raise ValueError(
                    f"runbook {self.name}: step {step.name} takes its timeout from unknown --{step.timeout}"
                )
        if any(step.destructive for step in self.steps) and self.trigger is None:
            raise ValueError(f"runbook {self.name}: destructive steps need a trigger to re-check")

    def parse_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        known = {param.name for param in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(
                f"{self.name}: unknown parameter --{unknown[0]}; parameters: "
                + (", ".join(f"--{name}" for name in sorted(known)) or "none")
            )
        return {param.name: param.parse(raw.get(param.name)) for param in self.params}
