"""Admission control decisions and the circuit breaker's transitions, on an injected clock."""

from __future__ import annotations

import pytest

from model_service.admission import AdmissionController
from model_service.breaker import BreakerSettings, CircuitBreaker


def test_admits_everything_until_throughput_is_known() -> None:
    controller = AdmissionController(latency_budget=0.5, max_queue=100)

    assert controller.decide(queued=99, in_flight=64).admit


def test_refuses_with_429_and_retry_after_when_the_budget_would_be_missed() -> None:
    controller = AdmissionController(latency_budget=0.5, max_queue=10_000)
    controller.observe(batch_size=100, seconds=0.5)  # 200 requests per second

    over = controller.decide(queued=40, in_flight=0)  # 40 / 200 = 0.2 s queued + a 0.5 s batch
    assert not over.admit
    assert over.status == 429
    ok = controller.decide(queued=0, in_flight=0)
    assert ok.admit and ok.estimated_wait == pytest.approx(0.5)

    far = controller.decide(queued=1000, in_flight=0)  # 5.5 s
    assert far.status == 429
    assert far.retry_after == 5
    assert "over the 0.50 s budget" in far.reason


def test_the_hard_queue_bound_answers_503() -> None:
    controller = AdmissionController(latency_budget=100, max_queue=8)

    decision = controller.decide(queued=8, in_flight=0)

    assert (decision.admit, decision.status) == (False, 503)
    assert decision.retry_after >= 1


def test_throughput_estimate_follows_recent_batches() -> None:
    controller = AdmissionController(smoothing=0.5)
    controller.observe(10, 1.0)
    controller.observe(30, 1.0)

    assert controller.throughput == pytest.approx(20.0)


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
    breaker = CircuitBreaker(BreakerSettings(window=2), on_switch=lambda s, p: switches.append((s, p)), clock=clock)

    _feed(breaker, clock, 0.1, 5)
    _feed(breaker, clock, 2.0, 3)
    _feed(breaker, clock, 0.1, 10)

    assert switches == []


def test_too_few_samples_decide_nothing() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(min_samples=20), on_switch=lambda s, p: None, clock=clock)

    breaker.record(5.0)

    assert breaker.p99() is None


def test_hysteresis_must_be_a_real_gap() -> None:
    with pytest.raises(ValueError, match="below trip_above"):
        BreakerSettings(trip_above=0.5, recover_below=0.5)
