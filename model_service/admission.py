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
from collections import deque
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
                 window: int = 64, min_batches: int = 8) -> None:  # fmt: skip
        """`latency_budget`: seconds a request may spend queued plus in its batch. `max_queue`:
        the hard bound on waiting requests, whatever the estimate. `window`: recent batches the
        cost model is fitted on; until `min_batches` have run (a cold start) only the hard bound
        applies, so one slow first batch does not shed a burst."""
        if latency_budget <= 0:
            raise ValueError(f"latency_budget must be > 0 seconds, got {latency_budget}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.latency_budget = latency_budget
        self.max_queue = max_queue
        self.enabled = enabled
        self._lock = threading.Lock()
        self._batches: deque[tuple[int, float]] = deque(maxlen=window)
        self._min_batches = min_batches
        self._cost: tuple[float, float] | None = None
        """(seconds per batch, seconds per request): a batch of n takes about a + b * n."""

    def observe(self, batch_size: int, seconds: float) -> None:
        """Feed one finished batch (size and handler time) into the cost model."""
        if batch_size <= 0 or seconds <= 0:
            return
        with self._lock:
            self._batches.append((batch_size, seconds))
            if len(self._batches) >= min(self._min_batches, self._batches.maxlen or 1):
                self._cost = _fit(self._batches)

    @property
    def throughput(self) -> float | None:
        """Requests per second at the largest batches seen (None until a batch has run)."""
        with self._lock:
            if self._cost is None:
                return None
            size = max(n for n, _ in self._batches)
            a, b = self._cost
            return size / (a + b * size)

    def batch_cap(self, batch_max: int, *, share: float) -> int:
        """The largest batch, up to `batch_max`, the cost model says runs within `share` of the
        latency budget (`batch_max` while the cost is unknown or admission is off).

        A request that arrives just after a batch left waits for all of it and then for its own:
        with batches of 128 (1 s on one core for the full model) no queue bound keeps that inside a
        200 ms budget. Capped at half the budget, the wait for the batch ahead and its own batch
        fit in the budget together. The cap and the cost model settle together: a batch over the
        cap's time raises the fitted cost and lowers the cap, and under it the other way."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        with self._lock:
            cost = self._cost
        if cost is None or not self.enabled:
            return batch_max
        a, b = cost
        if b <= 0.0:
            return batch_max
        return max(1, min(batch_max, math.floor((share * self.latency_budget - a) / b)))

    def estimated_wait(self, ahead: int, batch_max: int) -> float:
        """Seconds until a request with `ahead` requests before it is answered (0 if unknown):
        the queue drains in batches of up to `batch_max`, each costing a + b * size."""
        with self._lock:
            if self._cost is None:
                return 0.0
            a, b = self._cost
        total = ahead + 1
        return math.ceil(total / max(1, batch_max)) * a + b * total

    def decide(self, *, queued: int, in_flight: int, batch_max: int = 128) -> Decision:
        if not self.enabled:
            return Decision(admit=True)
        wait = self.estimated_wait(queued + in_flight, batch_max)
        if queued >= self.max_queue:
            return Decision(False, 503, self._retry_after(wait), f"queue full ({queued} waiting)", wait)
        if queued + in_flight == 0:
            # An idle replica admits, whatever its estimate: with nothing ahead, refusing protects no
            # one, and the cost model learns only from batches that run. Without this, a replica
            # whose batches were slow for a while (the drill's slow-layer fault) refused everything
            # for minutes after they were fast again, and a least-outstanding-requests balancer sent
            # it more than its share, since a refusal is the quickest answer.
            return Decision(admit=True, estimated_wait=wait)
        if wait > self.latency_budget:
            return Decision(
                False, 429, self._retry_after(wait),
                f"would wait {wait:.2f} s, over the {self.latency_budget:.2f} s budget", wait,
            )  # fmt: skip
        return Decision(admit=True, estimated_wait=wait)

    def _retry_after(self, wait: float) -> int:
        return max(1, math.ceil(wait - self.latency_budget)) if wait > 0 else 1


def _fit(batches: deque[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares a + b * size over recent batches, both kept >= 0. With one batch size only,
    all the time is charged per request (the pessimistic reading)."""
    sizes = [n for n, _ in batches]
    times = [t for _, t in batches]
    mean_n, mean_t = sum(sizes) / len(sizes), sum(times) / len(times)
    spread = sum((n - mean_n) ** 2 for n in sizes)
    if spread == 0:
        return 0.0, mean_t / mean_n
    b = sum((n - mean_n) * (t - mean_t) for n, t in batches) / spread
    b = max(b, 0.0)
    a = max(mean_t - b * mean_n, 0.0)
    if a == 0.0 and b == 0.0:
        return 0.0, mean_t / mean_n
    return a, b
