"""What can go wrong in a runbook run, by what the engine does about it.

`TransientError` is retried with backoff; every other `RunbookError` stops the run (and, once
something was changed, rolls it back). Adapters translate library errors into these at the
boundary, with the input and the fix in the message.
"""

from __future__ import annotations

__all__ = [
    "ApprovalError",
    "FreezeActiveError",
    "LiveStateChangedError",
    "LockHeldError",
    "ParameterError",
    "RunbookError",
    "TransientError",
    "UnknownRunError",
]


class RunbookError(Exception):
    """A runbook cannot go on; the message says what failed and what to do."""

    failed_at: float | None = None
    """When the failure was seen (time.monotonic), if a step undid part of its work before raising:
    the engine counts the rollback's time from there."""


class TransientError(RunbookError):
    """Worth retrying: throttling, a timeout, a 5xx, an optimistic-concurrency conflict."""


class ParameterError(RunbookError):
    """A runbook parameter is missing or invalid (checked before anything runs)."""


class ApprovalError(RunbookError):
    """The plan was not approved, the approval expired, or it names another plan."""


class LiveStateChangedError(RunbookError):
    """What a step would change no longer looks as it did when the plan was made."""


class LockHeldError(RunbookError):
    """Another runner holds the environment's lock."""

    def __init__(self, *, env: str, holder: str, since: str, expires: str, seconds_left: float | None = None) -> None:
        super().__init__(
            f"{env}: runbook lock held by {holder} since {since} (expires {expires} unless renewed); "
            "wait for it, or if that runner is gone, `--break-lock`"
        )
        self.holder = holder
        self.since = since
        self.seconds_left = seconds_left
        """Until the lease lapses unless its holder renews it; None when unknown."""


class FreezeActiveError(RunbookError):
    """A person set the change freeze for the environment."""


class StandAsideError(RunbookError):
    """A scheduled runbook yields to an incident (its hold) and does not act this cycle."""


class UnknownRunError(RunbookError):
    """No journal for a run id."""
