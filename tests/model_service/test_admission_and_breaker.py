"""Admission control decisions and the circuit breaker's transitions, on an injected clock."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from model_service.admission import MAX_MARGIN_SHARE, PRESSURE_SHARE, AdmissionController, Decision
from model_service.batcher import DynamicBatcher
from model_service.breaker import TRIP_MARGIN_SECONDS, TRIP_OVER_BUDGET, BreakerSettings, CircuitBreaker
from model_service.server import ServiceSettings


def test_admits_up_to_the_queue_bound_until_enough_batches_have_run() -> None:
    controller = AdmissionController(latency_budget=0.5, max_queue=100, min_batches=3)
    controller.observe(1, 5.0)
    controller.observe(1, 5.0)  # two slow cold batches decide nothing yet

    assert controller.decide(queued=99, in_flight=64).admit
    controller.observe(1, 5.0)
    assert not controller.decide(queued=99, in_flight=64).admit


def test_refuses_with_429_and_retry_after_when_the_budget_would_be_missed() -> None:
    controller = AdmissionController(latency_budget=0.5, max_queue=10_000, min_batches=2)
    controller.observe(batch_size=1, seconds=0.02)
    controller.observe(batch_size=100, seconds=0.218)  # fits 0.018 s per batch + 0.002 s per request

    ok = controller.decide(queued=0, in_flight=0, batch_max=100)
    over = controller.decide(queued=300, in_flight=0, batch_max=100)  # 4 batches: 4 x 0.018 + 301 x 0.002
    far = controller.decide(queued=3000, in_flight=0, batch_max=100)

    assert ok.admit
    assert ok.estimated_wait == pytest.approx(0.02)
    assert over.admit is False
    assert over.status == 429
    assert over.estimated_wait == pytest.approx(0.674)
    assert "over the 0.50 s budget" in over.reason
    assert far.retry_after == 7  # ceil(6.56 s estimated - 0.5 s budget)


def test_an_idle_replica_admits_whatever_its_estimate_and_learns_it_is_fast_again() -> None:
    controller = AdmissionController(latency_budget=0.4, max_queue=10_000, min_batches=2, window=8)
    for size in (1, 2) * 4:
        controller.observe(size, 0.6 + 0.01 * size)  # a slowed layer: 0.6 s a batch, over the budget

    assert not controller.decide(queued=0, in_flight=1).admit, "a request waiting behind a slow batch is refused"
    idle = controller.decide(queued=0, in_flight=0)
    assert idle.admit and idle.estimated_wait > 0.4, "nothing ahead: admitted, its estimate still slow"
    for size in (1, 2) * 4:  # what the admitted requests' batches then show: fast again
        controller.observe(size, 0.02 * size)
    assert controller.decide(queued=3, in_flight=1).admit


def _one_request_fits_two_do_not() -> AdmissionController:
    """Batches of one take 0.06 s: a request alone fits the 0.1 s budget, behind one other it does not."""
    controller = AdmissionController(latency_budget=0.1, max_queue=100, min_batches=2)
    controller.observe(1, 0.06)
    controller.observe(1, 0.06)
    return controller


def test_a_request_in_flight_counts_as_one_ahead_like_a_queued_one() -> None:
    controller = _one_request_fits_two_do_not()

    in_flight = controller.decide(queued=0, in_flight=1, batch_max=1)
    queued = controller.decide(queued=1, in_flight=0, batch_max=1)

    assert (in_flight.admit, in_flight.status) == (False, 429)
    assert in_flight.estimated_wait == pytest.approx(0.12) == queued.estimated_wait
    assert controller.decide(queued=0, in_flight=0, batch_max=1).admit


def test_an_admitted_request_holds_its_slot_until_its_batch_finishes() -> None:
    # What the server asks admission (server.refuse_unread): the batcher's queue and its running batch.
    controller = _one_request_fits_two_do_not()
    release = threading.Event()

    def handler(items: Sequence[str]) -> list[str]:
        release.wait(2)
        return list(items)

    async def scenario() -> tuple[Decision, Decision]:
        batcher: DynamicBatcher[str, str] = DynamicBatcher(handler, bounds=lambda: (1, 1), max_wait=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit("first"))
        deadline = time.monotonic() + 2
        while batcher.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        while_running = controller.decide(queued=batcher.depth, in_flight=batcher.in_flight, batch_max=1)
        release.set()
        assert await first == "first"
        deadline = time.monotonic() + 2
        while batcher.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        after = controller.decide(queued=batcher.depth, in_flight=batcher.in_flight, batch_max=1)
        await batcher.stop()
        return while_running, after

    while_running, after = asyncio.run(scenario())

    assert (while_running.admit, while_running.status) == (False, 429), "the running request is ahead of the next"
    assert while_running.estimated_wait == pytest.approx(0.12)
    assert after.admit and after.estimated_wait == pytest.approx(0.06), "finishing freed its slot"


def test_bigger_batches_drain_a_queue_sooner() -> None:
    controller = AdmissionController(min_batches=2)
    controller.observe(1, 0.02)
    controller.observe(100, 0.218)

    assert controller.estimated_wait(300, batch_max=128) < controller.estimated_wait(300, batch_max=16)


def test_the_hard_queue_bound_answers_503() -> None:
    controller = AdmissionController(latency_budget=100, max_queue=8)

    decision = controller.decide(queued=8, in_flight=0)

    assert (decision.admit, decision.status) == (False, 503)
    assert decision.retry_after >= 1


def test_one_batch_size_charges_all_time_per_request() -> None:
    controller = AdmissionController(min_batches=2)
    controller.observe(10, 1.0)
    controller.observe(10, 1.0)

    assert controller.throughput == pytest.approx(10.0)
    assert controller.estimated_wait(9, batch_max=10) == pytest.approx(1.0)


def test_disabled_controller_admits_everything() -> None:
    controller = AdmissionController(enabled=False, max_queue=1)
    controller.observe(1, 10.0)

    assert controller.decide(queued=1000, in_flight=1000).admit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _feed(breaker: CircuitBreaker, clock: Clock, latency: float, seconds: float, per_second: int = 20) -> None:
    for _ in range(int(seconds * per_second)):
        clock.now += 1 / per_second
        breaker.record(latency)


def test_sustained_slowness_opens_and_sustained_recovery_closes_with_hysteresis() -> None:
    clock = Clock()
    switches: list[tuple[bool, float]] = []
    settings = BreakerSettings(trip_above=0.5, trip_after=5, recover_below=0.25, recover_after=30, window=2)
    breaker = CircuitBreaker(settings, on_switch=lambda state, p99: switches.append((state, p99)), clock=clock)

    _feed(breaker, clock, 0.1, 10)
    assert not breaker.open
    _feed(breaker, clock, 0.9, 4)  # slow, but not yet for 5 s
    assert not breaker.open
    _feed(breaker, clock, 0.9, 5)
    assert breaker.open and switches[-1][0] is True

    _feed(breaker, clock, 0.4, 60)  # better, but not below recover_below: stays open
    assert breaker.open
    _feed(breaker, clock, 0.1, 20)
    assert breaker.open, "recovery needs 30 s below the lower threshold"
    _feed(breaker, clock, 0.1, 15)
    assert not breaker.open
    assert [state for state, _ in switches] == [True, False]


def test_a_short_spike_does_not_trip() -> None:
    clock = Clock()
    switches: list[tuple[bool, float]] = []
    settings = BreakerSettings().for_budget(0.5)
    breaker = CircuitBreaker(settings, on_switch=lambda s, p: switches.append((s, p)), clock=clock)

    _feed(breaker, clock, 0.1, 5)
    _feed(breaker, clock, 2.0, 3)
    _feed(breaker, clock, 0.1, 10)

    assert switches == []


def test_too_few_samples_decide_nothing() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(min_samples=20).for_budget(0.5), on_switch=lambda s, p: None, clock=clock)

    breaker.record(5.0)

    assert breaker.p99() is None


def test_the_default_trip_sits_above_the_budget_admission_holds() -> None:
    settings = BreakerSettings().for_budget(0.4)

    assert settings.trip_above == pytest.approx(TRIP_OVER_BUDGET * 0.4) and settings.trip_above > 0.4
    assert settings.recover_below == pytest.approx(settings.trip_above / 2)
    assert BreakerSettings(trip_above=0.8).for_budget(0.4).trip_above == 0.8  # an explicit trip stays


def test_a_small_budget_s_default_trip_keeps_a_margin_scheduling_jitter_cannot_cross() -> None:
    small = BreakerSettings().for_budget(0.02)

    assert small.trip_above == pytest.approx(0.02 + TRIP_MARGIN_SECONDS), "not 30 ms: jitter alone reached that"
    assert BreakerSettings().for_budget(0.3).trip_above == pytest.approx(TRIP_OVER_BUDGET * 0.3), "wide budgets: 1.5x"


def test_admission_held_latency_at_the_budget_does_not_open_the_default_breaker() -> None:
    """The 8x runs of 2026-12-07: admission held p99 near its budget and the fixed 0.5 s trip, at
    the budget, opened the breaker in every run."""
    clock = Clock()
    switches: list[tuple[bool, float]] = []
    budget = 0.5
    breaker = CircuitBreaker(ServiceSettings(artifacts=Path("unused"), latency_budget=budget).breaker,
                             on_switch=lambda s, p: switches.append((s, p)), clock=clock)  # fmt: skip

    _feed(breaker, clock, budget * 1.05, 60)  # a little over the budget, for a minute
    assert switches == []
    _feed(breaker, clock, budget * 2, 12)  # well past it: admission is no longer enough
    assert [state for state, _ in switches] == [True]


def test_one_stall_at_8x_does_not_open_the_breaker_but_slowness_that_outlasts_its_window_does() -> None:
    """The bench's 8x runs (docs/bench/bench-model-20261207b.json, repetitions 1 and 3): answers held
    just under a trip at the SLO, one quarter-second stall (the generator's send lag reached 238 ms)
    pushing the answers in flight past it. With a 10 s window and a 5 s trip the stall's answers,
    over 1% of the window, held its p99 up long enough to open the breaker."""
    clock = Clock()
    switches: list[tuple[bool, float]] = []
    breaker = CircuitBreaker(BreakerSettings(trip_above=0.44, recover_below=0.22),
                             on_switch=lambda s, p: switches.append((s, p)), clock=clock)  # fmt: skip

    _feed(breaker, clock, 0.37, 10, per_second=60)
    _feed(breaker, clock, 0.62, 0.6, per_second=60)  # 36 answers delayed by the stall
    _feed(breaker, clock, 0.37, 30, per_second=60)
    assert switches == []

    _feed(breaker, clock, 0.62, 16, per_second=60)  # slow for longer than window + trip_after
    assert [state for state, _ in switches] == [True]


def test_a_window_as_long_as_the_trip_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than trip_after"):
        BreakerSettings(window=10, trip_after=5)


def test_a_breaker_without_thresholds_is_refused() -> None:
    with pytest.raises(ValueError, match="for_budget"):
        CircuitBreaker(BreakerSettings(), on_switch=lambda s, p: None)


def test_hysteresis_must_be_a_real_gap() -> None:
    with pytest.raises(ValueError, match="below trip_above"):
        BreakerSettings(trip_above=0.5, recover_below=0.5)


def test_the_p99_is_always_that_of_the_latencies_still_in_the_window() -> None:
    clock = Clock()
    rng = random.Random(5)  # noqa: S311 (reproducible test data)
    breaker = CircuitBreaker(BreakerSettings(window=2, min_samples=1, trip_above=100, recover_below=50),
                             on_switch=lambda s, p: None, clock=clock)  # fmt: skip
    recorded: list[tuple[float, float]] = []
    for _ in range(3000):
        clock.now += rng.uniform(0, 0.01)
        latency = round(rng.uniform(0, 1), 2)  # repeats: equal latencies leave the window one at a time
        recorded.append((clock.now, latency))
        breaker.record(latency)
        if rng.random() < 0.05:
            window = sorted(lat for at, lat in recorded if at >= clock.now - 2)
            assert breaker.p99() == window[min(len(window) - 1, int(0.99 * len(window)))]


def _calibrated(budget: float, overrun: float, answers: int = 64) -> AdmissionController:
    """A controller whose cost model says 10 ms per request and whose answers ran `overrun` past
    their estimates."""
    controller = AdmissionController(latency_budget=budget, max_queue=10_000, min_batches=1, min_calibration=64,
                                     pressure_window=20)  # fmt: skip
    controller.observe(batch_size=1, seconds=0.01)
    for _ in range(answers):
        controller.observe_answer(0.05, 0.05 + overrun)
    return controller


def _overloaded(controller: AdmissionController, refusals: int) -> None:
    """`refusals` decisions refused on the budget alone (a queue of 100 waits 1.01 s)."""
    for _ in range(refusals):
        assert not controller.decide(queued=100, in_flight=1).admit


def test_under_overload_answers_that_ran_past_their_estimates_narrow_admission_by_their_p99() -> None:
    controller = _calibrated(budget=0.5, overrun=0.1)
    _overloaded(controller, 20)

    assert controller.margin == pytest.approx(0.1)
    assert controller.decide(queued=35, in_flight=1).admit  # 0.36 s + 0.10 s fits 0.5
    refused = controller.decide(queued=45, in_flight=1)  # 0.47 s alone would have fitted
    assert not refused.admit and refused.status == 429
    assert "+0.10 s recent answers ran past their estimates" in refused.reason


def test_the_margin_is_off_while_admission_refuses_under_a_quarter() -> None:
    """Below PRESSURE_SHARE the overrun is jitter no refusal removes (the drill after its surge)."""
    controller = _calibrated(budget=0.5, overrun=0.1)
    for _ in range(16):
        assert controller.decide(queued=10, in_flight=1).admit
    _overloaded(controller, 4)  # 4 of 20 refused: 20%

    assert controller.decide(queued=45, in_flight=1).admit  # the margin would refuse it
    _overloaded(controller, 1)  # 5 of 20: 25%
    assert not controller.decide(queued=45, in_flight=1).admit
    assert PRESSURE_SHARE == 0.25


def test_no_margin_before_enough_answers_or_when_answers_beat_their_estimates() -> None:
    assert _calibrated(budget=0.5, overrun=0.1, answers=63).margin == 0.0
    early = _calibrated(budget=0.5, overrun=-0.03)
    assert early.margin == 0.0
    _overloaded(early, 20)
    assert early.decide(queued=45, in_flight=1).admit


def test_the_margin_narrows_admission_but_never_closes_it() -> None:
    controller = _calibrated(budget=0.5, overrun=10.0)  # a GC pause, a noisy neighbour
    _overloaded(controller, 20)

    assert controller.margin == pytest.approx(MAX_MARGIN_SHARE * 0.5)
    assert controller.decide(queued=20, in_flight=1).admit  # 0.21 s + 0.25 s


def test_the_margin_follows_a_window_of_any_length() -> None:
    """The window full, its length no longer counts answers: with 500 (not a multiple of the
    recalibration interval) the margin once froze at its first value."""
    controller = AdmissionController(latency_budget=0.5, min_batches=1, min_calibration=64, calibration_window=500)
    for _ in range(600):
        controller.observe_answer(0.05, 0.25)
    for _ in range(2000):
        controller.observe_answer(0.05, 0.06)

    assert controller.margin == pytest.approx(0.01)


def test_the_margin_follows_recent_answers_not_all_of_them() -> None:
    controller = _calibrated(budget=0.5, overrun=0.2)
    for _ in range(512):
        controller.observe_answer(0.05, 0.06)

    assert controller.margin == pytest.approx(0.01)


def test_the_batch_cap_is_the_largest_batch_that_runs_in_its_share_of_the_budget() -> None:
    controller = AdmissionController(latency_budget=0.2, min_batches=2)
    assert controller.batch_cap(128, share=0.5) == 128  # nothing measured yet: the mode decides
    for size in (2, 4, 8, 16):
        controller.observe(size, 0.02 + 0.005 * size)  # a = 20 ms per batch, b = 5 ms per request

    assert controller.batch_cap(128, share=0.5) == 16  # 20 + 5 * 16 = 100 ms = half of 200
    assert controller.batch_cap(10, share=0.5) == 10
    assert controller.batch_cap(128, share=1.0) == 36
    controller.latency_budget = 0.03
    assert controller.batch_cap(128, share=0.5) == 1  # not even one fits: one at a time, never none


def test_without_admission_the_cap_is_the_mode_s() -> None:
    controller = AdmissionController(latency_budget=0.2, min_batches=1, enabled=False)
    controller.observe(10, 5.0)

    assert controller.batch_cap(128, share=0.5) == 128


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_the_budget_is_named(share: float) -> None:
    with pytest.raises(ValueError, match="share must be in"):
        AdmissionController().batch_cap(128, share=share)
