"""Fakes at the engine's seams (lock, freeze) and toy runbooks whose steps act on an in-memory world.

The engine is the unit under test; the toy steps are its input. Each step sets one value of the
world to a target and logs every apply and restore, so tests can count what the engine did.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runbooks.engine.locking import LockInfo
from runbooks.engine.planning import Approval, Plan, make_plan
from runbooks.engine.run import Engine
from runbooks.engine.spec import Context, Gate, Param, Reading, Runbook, Step
from runbooks.errors import LockHeldError, RunbookError

ENV = "dev"
OPERATOR = "test-operator"
POLL = 0.05
"""Seconds between gate readings in every toy runbook."""
STEP_TIMEOUT = 0.3
"""Seconds a toy step's gate may take: failing gates time out quickly."""


class RunnerKilled(BaseException):
    """The runner process dying mid-run: neither an Exception nor Ctrl-C, so the engine cannot catch it."""


# --- The world the toy steps act on ------------------------------------------------------------


@dataclass
class World:
    """Named values standing in for live state, and a log of what steps did to them."""

    values: dict[str, Any]
    log: list[tuple[str, str, Any]] = field(default_factory=list)
    """(action, step, value): action is `apply` or `restore`, logged before the hook runs."""
    before_apply: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    """Per step name: called with the target before the value is set (may raise)."""
    before_restore: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    """Per step name: called with the rollback target before the value is set (may raise)."""

    def calls(self, action: str, step: str) -> int:
        return sum(1 for logged, name, _ in self.log if logged == action and name == step)

    def order(self, action: str) -> list[str]:
        return [name for logged, name, _ in self.log if logged == action]


def _world(context: Context) -> World:
    world = context.ports
    assert isinstance(world, World)
    return world


def setter(
    name: str,
    key: str,
    *,
    to: Any,
    verify: Gate | None = None,
    destructive: bool = False,
    timeout: float = STEP_TIMEOUT,
    retries: int = 3,
    own_restore: bool = True,
) -> Step:
    """A step that sets `world[key]` to `to` (a value, or a function of the context and the observed value)."""

    def observe(context: Context) -> Any:
        return _world(context).values[key]

    def desired(context: Context, before: Any) -> Any:
        return to(context, before) if callable(to) else to

    def apply(context: Context, target: Any) -> None:
        world = _world(context)
        world.log.append(("apply", name, target))
        if hook := world.before_apply.get(name):
            hook(target)
        world.values[key] = target

    def restore(context: Context, before: Any) -> None:
        world = _world(context)
        world.log.append(("restore", name, before))
        if hook := world.before_restore.get(name):
            hook(before)
        world.values[key] = before

    return Step(
        name=name,
        summary=f"set {key}",
        observe=observe,
        desired=desired,
        apply=apply,
        verify=verify,
        restore=restore if own_restore else None,
        timeout=timeout,
        retries=retries,
        destructive=destructive,
    )


def gate(
    name: str, value: Callable[[World], Any], *, at_most: float | None = None, at_least: float | None = None
) -> Gate:
    """A gate whose probe computes its reading from the world."""

    def probe(context: Context) -> Reading:
        seen = value(_world(context))
        return Reading(seen, raw={"samples": [seen]}, query=f"toy:{name}")

    return Gate(name, probe, at_most=at_most, at_least=at_least)


def reads(key: str, *, at_most: float | None = None, at_least: float | None = None) -> Gate:
    """A gate on one value of the world."""
    return gate(key, lambda world: world.values.get(key), at_most=at_most, at_least=at_least)


def toy_runbook(
    *steps: Step, health: Gate | None = None, trigger: Gate | None = None, params: tuple[Param, ...] = ()
) -> Runbook:
    return Runbook(
        name="toy",
        summary="a toy runbook over an in-memory world",
        steps=steps,
        params=params,
        health=health,
        trigger=trigger,
        poll_interval=POLL,
        # Short: a health gate that will not pass is judged within the test's time.
        recovery_timeout=0.3,
    )


# --- Fakes at the engine's ports ----------------------------------------------------------------


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds")


class InMemoryLock:
    """The environment's lock: one holder at a time, a second refused unless forced; renewals can be made to fail."""

    def __init__(self, env: str = ENV) -> None:
        self.env = env
        self.holder: str | None = None
        self.since = 0.0
        self.expires_at = 0.0
        self.ttl = 0.0
        self._mine: str | None = None
        self.acquisitions: list[tuple[str, float, bool]] = []
        """(holder, ttl, force) of every successful acquire through this handle."""
        self.releases = 0
        self.renewals = 0
        self.fail_renewals = False
        self.renew_failed = threading.Event()
        """Set once a renewal was refused."""

    def hold_as(self, holder: str, *, ttl: float = 300.0) -> None:
        """Another runner takes the lock."""
        self.holder, self.since, self.ttl = holder, time.time(), ttl
        self.expires_at = self.since + ttl
        self._mine = None

    def acquire(self, *, holder: str, ttl: float, force: bool = False) -> LockInfo:
        now = time.time()
        if self.holder is not None and now < self.expires_at and not force:
            raise LockHeldError(env=self.env, holder=self.holder, since=_iso(self.since), expires=_iso(self.expires_at),
                                seconds_left=self.expires_at - now)  # fmt: skip
        self.holder, self.since, self.ttl, self.expires_at = holder, now, ttl, now + ttl
        self._mine = holder
        self.acquisitions.append((holder, ttl, force))
        return LockInfo(holder=holder, since=_iso(now), expires=_iso(self.expires_at))

    def renew(self) -> None:
        if self.fail_renewals or self._mine is None or self.holder != self._mine:
            self.renew_failed.set()
            raise RunbookError(f"{self.env}: lock was taken over by {self.holder or 'nobody'}")
        self.renewals += 1
        self.expires_at = time.time() + self.ttl

    def release(self) -> None:
        self.releases += 1
        if self._mine is not None and self.holder == self._mine:
            self.holder = None
        self._mine = None


class SettableFreeze:
    """The change freeze: None, or why a person froze the environment."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def freeze_reason(self) -> str | None:
        return self.reason


# --- Fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def world() -> World:
    return World({"a": 2, "b": "off", "c": 1, "load": 500.0, "errors": 0.0})


@pytest.fixture
def lock() -> InMemoryLock:
    return InMemoryLock()


@pytest.fixture
def freeze() -> SettableFreeze:
    return SettableFreeze()


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


EngineFactory = Callable[..., Engine]


@pytest.fixture
def engine_for(world: World, lock: InMemoryLock, freeze: SettableFreeze, journal_dir: Path) -> EngineFactory:
    """An engine for a toy runbook over the test's world; keyword arguments override the engine's settings."""

    def _make(runbook: Runbook, *, params: dict[str, Any] | None = None, **settings: Any) -> Engine:
        context = Context(env=ENV, params=params or {}, ports=world)
        settings.setdefault("rollback_timeout", 1.0)
        return Engine(
            runbook=runbook,
            context=context,
            journal_dir=journal_dir,
            lock=lock,
            freeze=freeze,
            operator=OPERATOR,
            **settings,
        )

    return _make


def approved_plan(engine: Engine) -> tuple[Plan, Approval]:
    plan = make_plan(engine.runbook, engine.context)
    return plan, Approval.of(plan, approved_by=OPERATOR, how="--yes")


def records(path: Path) -> list[dict[str, Any]]:
    """Every whole record of a journal file, read without the Journal class."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def events(path: Path) -> list[str]:
    return [record["event"] for record in records(path)]


def of_event(path: Path, event: str) -> list[dict[str, Any]]:
    return [record for record in records(path) if record["event"] == event]


def only_journal(directory: Path) -> Path:
    (path,) = directory.glob("*.jsonl")
    return path


def in_order(seen: list[str], expected: list[str]) -> bool:
    """`expected` occurs in `seen` as a subsequence."""
    remaining: Iterator[str] = iter(seen)
    return all(any(item == wanted for item in remaining) for wanted in expected)
