"""Deadlines: every call to a live API ends before the step that made it runs out of time.

The engine says how long what it is doing may take (a step's apply and verification, one rollback
step, a gate's polling); the adapters ask `call_timeout` before each call to Kubernetes, AWS or a
model-service pod and use its answer as that call's connect and read timeout: their own cap, or
what is left of the deadline if that is less. Once the deadline has passed no call is made at
all: `DeadlineExceededError` fails the step, which the engine then rolls back. So a hung PATCH
costs a step its timeout, never more, and the rollback starts on time.

The deadline lives in a context variable: a thread started meanwhile (the lock's heartbeat) does
not inherit it and keeps its own caps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

from runbooks.errors import RunbookError

__all__ = ["DeadlineExceededError", "call_timeout", "remaining", "until"]

_deadline: ContextVar[tuple[float, str] | None] = ContextVar("runbook_deadline", default=None)
"""(time.monotonic() it ends at, what it bounds)."""


class DeadlineExceededError(RunbookError):
    """What was being done ran out of its time; not worth retrying within the same deadline."""


@contextlib.contextmanager
def until(seconds: float, *, what: str) -> Iterator[None]:
    """Calls made inside end within `seconds` from now (or the enclosing deadline, if sooner)."""
    ends = time.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and outer[0] <= ends:
        ends, what = outer
    token = _deadline.set((ends, what))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline; None outside any."""
    current = _deadline.get()
    return None if current is None else current[0] - time.monotonic()


def call_timeout(cap: float, *, doing: str) -> float:
    """The timeout for one call: `cap`, or less if the deadline is nearer. Raises once it has passed."""
    current = _deadline.get()
    if current is None:
        return cap
    left = current[0] - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError(f"{current[1]}: out of time before {doing}")
    return min(cap, left)
