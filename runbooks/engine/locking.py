"""One runbook per environment at a time: a lock with a heartbeat, and the change freeze.

The lock is a port: the production adapter is a Kubernetes `Lease` in the model-service namespace
(`runbooks/ports/cluster.py`). While a run lives, a heartbeat renews it; if the runner dies, the lease
expires and the next runner may take it. A run whose heartbeat fails stops before its next step.

The lock is held by a runner, not by a name: its identity carries the operator (for people), the
run id and a token unique to the runner process, so two runners started by the same person on the
same host are two holders, and a resumed run is a new runner of the same run.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FreezeSource", "Heartbeat", "Lock", "LockInfo", "run_of", "runner_identity"]


@dataclass(frozen=True)
class LockInfo:
    holder: str
    since: str
    """ISO time the holder took it."""
    expires: str
    """ISO time it lapses unless renewed."""


def runner_identity(*, operator: str, run_id: str) -> str:
    """A new runner's lock identity: `operator/run id/token`, unique to this process's attempt."""
    return f"{operator}/{run_id}/{secrets.token_hex(4)}"


def run_of(identity: str) -> str | None:
    """The run id in a runner identity; None for a holder that is not a runner's (a person, an old client)."""
    parts = identity.rsplit("/", 2)
    return parts[1] if len(parts) == 3 and parts[1] else None


class Lock(Protocol):
    """The environment's runbook lock."""

    def acquire(self, *, holder: str, ttl: float, force: bool = False) -> LockInfo:
        """Take the lock for `ttl` seconds, or raise LockHeldError naming the holder.

        `holder` is the runner's identity (`runner_identity`); any other live holder refuses it,
        whatever its name. `force` takes it from a holder that is gone (`--break-lock`)."""
        ...

    def renew(self) -> None:
        """Extend the lock by its ttl, only if this runner still holds it; raise RunbookError if it was lost."""
        ...

    def release(self) -> None:
        """Give it up, only if this runner still holds it (a no-op if it was lost)."""
        ...


class FreezeSource(Protocol):
    """The change freeze a person sets for an environment (SSM `/peakguard/<env>/change-freeze`)."""

    def freeze_reason(self) -> str | None:
        """Why changes are frozen, or None when they are not."""
        ...


class Heartbeat:
    """Renews a lock every `interval` seconds on a thread; remembers a failed renewal."""

    def __init__(self, lock: Lock, *, interval: float) -> None:
        self._lock = lock
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="runbook-lock-heartbeat", daemon=True)
        self.lost: str | None = None
        """Why the lock was lost, once it was."""

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._lock.renew()
            except Exception as exc:  # noqa: BLE001 (any failure means the lock may be gone)
                self.lost = str(exc)
                return
