"""Circuit breaker: sustained slow answers switch the service to the light model, with hysteresis.

It watches the p99 of request latency over a sliding window. When p99 stays above `trip_above`
for `trip_after` seconds the breaker opens (the light model answers); it closes again only after
p99 has stayed below the lower `recover_below` for the longer `recover_after`, so it does not
flap. Every switch is logged and counted by the caller's callback.

Admission control holds admitted answers' p99 near its latency budget through any surge a healthy
model can take, so the breaker must trip above that budget: by default at `TRIP_OVER_BUDGET` times
it. A fixed 0.5 s trip under a 0.5 s budget (the old defaults) opened at every surge admission was
handling, and in the benchmark the light model answered most of the 8x runs it was meant to measure.
Past the budget, admission is no longer enough (a slow layer, a cold GPU): that is the breaker's case.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TRIP_MARGIN_SECONDS", "TRIP_OVER_BUDGET", "BreakerSettings", "CircuitBreaker"]

TRIP_OVER_BUDGET = 1.5
"""Default trip: p99 this many times the admission budget. With calibrated admission (admission.py),
8x runs on one core (seed-0 full FP32 model, 405 requests/s for 40 s, 2026-12-07) kept every
5-second p99 of admitted answers near the budget: at most 0.96x of 229 ms and 1.004x of 285 ms
(the first 5 s, while calibration learns). The trip leaves clear room above that. Where the SLO
is known and lower than this trip, set `trip_above` to it (`peakguard bench model` does)."""

TRIP_MARGIN_SECONDS = 0.05
"""The default trip is at least this far above the budget: on a busy 2-core machine scheduling alone
added tens of milliseconds (the breaker opened at 1.5x a 30 ms budget in a CI run and before the
predictive drill's surge). A real service's budget is hundreds of milliseconds, where 1.5x is wider."""

log = logging.getLogger("peakguard.breaker")


@dataclass(frozen=True)
class BreakerSettings:
    trip_above: float | None = None
    """p99 seconds that, sustained, opens the breaker; None: `TRIP_OVER_BUDGET` x the latency budget,
    and at least `TRIP_MARGIN_SECONDS` above it."""
    trip_after: float = 10.0
    """Seconds p99 must stay above `trip_above`; longer than `window` (see there)."""
    recover_below: float | None = None
    """p99 seconds under which the breaker may close (below trip_above: hysteresis); None: half of
    trip_above."""
    recover_after: float = 30.0
    """Seconds p99 must stay below `recover_below` before going back to the full model."""
    window: float = 5.0
    """Seconds of latencies the p99 is taken over. Shorter than `trip_after`, as a Prometheus alert's
    `for` is longer than its rate window: a burst of slow answers holds the window's p99 up for as
    long as the window keeps them, so a 10 s window with a 5 s trip (the old defaults) opened on
    bursts of a few seconds. At 8x it opened in two of three repetitions of the acceptance bench
    (docs/bench/bench-model-20261207b.json: 212 and 192 full-model answers, then the light model for
    the rest); replayed on the same 8x answers (`peakguard bench breaker`,
    docs/bench/bench-breaker-20261207.json) the old timing opened 5.7 s into a surge whose p99 was
    over the trip for at most 5 s at a stretch by this window, and this one stayed shut. Slowness
    that lasts opens it within `trip_after` (plus the moments the window takes to fill)."""
    min_samples: int = 20
    """Fewer latencies than this in the window decide nothing."""

    def __post_init__(self) -> None:
        if self.window >= self.trip_after:
            raise ValueError(
                f"window ({self.window} s) must be shorter than trip_after ({self.trip_after} s): otherwise one "
                "burst shorter than trip_after keeps the window's p99 up long enough to open the breaker"
            )
        if self.trip_above is not None and self.trip_above <= 0:
            raise ValueError(f"trip_above must be > 0 seconds, got {self.trip_above}")
        if self.recover_below is not None and not 0 < self.recover_below < (self.trip_above or math.inf):
            raise ValueError(
                f"recover_below ({self.recover_below}) must be > 0 and below trip_above ({self.trip_above})"
            )

    def for_budget(self, latency_budget: float) -> BreakerSettings:
        """These settings with the thresholds left to defaults set from admission's `latency_budget`."""
        trip = self.trip_above
        if trip is None:
            trip = max(TRIP_OVER_BUDGET * latency_budget, latency_budget + TRIP_MARGIN_SECONDS)
        recover = self.recover_below if self.recover_below is not None else trip / 2
        return dataclasses.replace(self, trip_above=trip, recover_below=recover)


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, *, on_switch: Callable[[bool, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """`on_switch(open, p99)` is called on every change of state. `settings` must have both
        thresholds (`BreakerSettings.for_budget` fills them)."""
        if settings.trip_above is None or settings.recover_below is None:
            raise ValueError("the breaker needs trip_above and recover_below: use BreakerSettings.for_budget")
        self.settings = settings
        self._trip_above, self._recover_below = settings.trip_above, settings.recover_below
        self._on_switch = on_switch
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        self._ordered: list[float] = []
        """The window's latencies, kept sorted as they come and go: every request reads the p99, and
        sorting the window per request (3000 latencies at 300 requests/s) was 5.6% of the server's
        samples under overload (`peakguard bench server`)."""
        self._lock = threading.Lock()
        self.open = False
        self._condition_since: float | None = None
        """When the condition that would switch state began to hold."""

    def p99(self) -> float | None:
        with self._lock:
            return self._p99_locked(self._clock())

    def _p99_locked(self, now: float) -> float | None:
        while self._samples and self._samples[0][0] < now - self.settings.window:
            _, latency = self._samples.popleft()
            del self._ordered[bisect.bisect_left(self._ordered, latency)]
        if len(self._samples) < self.settings.min_samples:
            return None
        ordered = self._ordered
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def record(self, latency: float) -> None:
        """Add one request's latency and re-evaluate."""
        switched: tuple[bool, float] | None = None
        with self._lock:
            now = self._clock()
            self._samples.append((now, latency))
            bisect.insort(self._ordered, latency)
            p99 = self._p99_locked(now)
            if p99 is None:
                return
            s = self.settings
            crossing = p99 < self._recover_below if self.open else p99 > self._trip_above
            if not crossing:
                self._condition_since = None
                return
            if self._condition_since is None:
                self._condition_since = now
            if now - self._condition_since >= (s.recover_after if self.open else s.trip_after):
                self.open = not self.open
                self._condition_since = None
                switched = (self.open, p99)
        if switched is not None:
            state, p99 = switched
            log.warning(
                "circuit breaker %s: p99 %.3f s", "opened (light model)" if state else "closed (full model)", p99
            )
            self._on_switch(state, p99)
