"""One runbook per environment at a time: a lock with a heartbeat, and the change freeze.

The lock is a port: the production adapter is a Kubernetes `Lease` in the model-service namespace
(`runbooks/cluster.py`). While a run lives, a heartbeat renews it; if the runner dies, the lease
expires and the next runner may take it. A run whose heartbeat fails stops before its next step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FreezeSource", "Heartbeat", "Lock", "LockInfo"]


@dataclass(frozen=True)
class LockInfo:
    holder: str
    since: str
    """ISO time the holder took it."""
    expires: str
    """ISO time it lapses unless renewed."""


class Lock(Protocol):
    """The environment's runbook lock."""

    def acquire(self, *, holder: str, ttl: float, force: bool = False) -> LockInfo:
        """Take the lock for `ttl` seconds, or raise LockHeldError naming the holder.

        `force` takes it from a holder that is gone (`--break-lock`)."""
        ...

    def renew(self) -> None:
        """Extend the lock by its ttl; raise RunbookError if it was lost."""
        ...

    def release(self) -> None:
        """Give it up (a no-op if it was lost)."""
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
