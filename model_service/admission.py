"""Admission control: refuse at once what cannot be answered within the latency budget.

The outage's 12-second replies came from queues that grew without bound: every request was
accepted and then waited behind all the others. Here each request is admitted only if the queue
ahead of it can drain within the budget at the throughput the model is measured to sustain;
otherwise it gets 429 (shed, try again shortly) with a Retry-After, or 503 when the hard queue
bound is hit. Nothing waits 12 s.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

__all__ = ["AdmissionController", "Decision"]


@dataclass(frozen=True)
class Decision:
    admit: bool
    status: int = 200
    """429 when the budget would be missed, 503 when the queue is full."""
    retry_after: int = 0
    """Whole seconds until the queue should have drained (Retry-After header)."""
    reason: str = ""
    estimated_wait: float = 0.0


class AdmissionController:
    def __init__(self, *, latency_budget: float = 0.5, max_queue: int = 2048, enabled: bool = True,
                 smoothing: float = 0.2) -> None:  # fmt: skip
        """`latency_budget`: seconds a request may spend queued plus in its batch. `max_queue`:
        the hard bound on waiting requests, whatever the estimate. `smoothing`: weight of the newest
        batch in the throughput estimate."""
        if latency_budget <= 0:
            raise ValueError(f"latency_budget must be > 0 seconds, got {latency_budget}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.latency_budget = latency_budget
        self.max_queue = max_queue
        self.enabled = enabled
        self._smoothing = smoothing
        self._lock = threading.Lock()
        self._throughput: float | None = None
        """Requests per second the model sustains, from recent batches."""
        self._batch_seconds: float | None = None

    def observe(self, batch_size: int, seconds: float) -> None:
        """Feed one finished batch (size and handler time) into the estimates."""
        if batch_size <= 0 or seconds <= 0:
            return
        rate = batch_size / seconds
        with self._lock:
            if self._throughput is None or self._batch_seconds is None:
                self._throughput, self._batch_seconds = rate, seconds
            else:
                a = self._smoothing
                self._throughput = (1 - a) * self._throughput + a * rate
                self._batch_seconds = (1 - a) * self._batch_seconds + a * seconds

    @property
    def throughput(self) -> float | None:
        with self._lock:
            return self._throughput

    def estimated_wait(self, ahead: int) -> float:
        """Seconds until a request with `ahead` requests before it is answered (0 if unknown)."""
        with self._lock:
            if self._throughput is None or self._batch_seconds is None:
                return 0.0
            return ahead / self._throughput + self._batch_seconds

    def decide(self, *, queued: int, in_flight: int) -> Decision:
        if not self.enabled:
            return Decision(admit=True)
        ahead = queued + in_flight
        wait = self.estimated_wait(ahead)
        if queued >= self.max_queue:
            return Decision(False, 503, self._retry_after(wait), f"queue full ({queued} waiting)", wait)
        if wait > self.latency_budget:
            return Decision(
                False, 429, self._retry_after(wait),
                f"would wait {wait:.2f} s, over the {self.latency_budget:.2f} s budget", wait,
            )  # fmt: skip
        return Decision(admit=True, estimated_wait=wait)

    def _retry_after(self, wait: float) -> int:
        return max(1, math.ceil(wait - self.latency_budget)) if wait > 0 else 1
