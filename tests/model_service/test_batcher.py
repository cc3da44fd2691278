"""The dynamic batcher: order, bounds, token budget, short waits, failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from model_service.batcher import BatchStats, DynamicBatcher


class Recorder:
    """A handler that records the batches it saw, optionally slowly or failing on one item."""

    def __init__(self, *, delay: float = 0.0, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.poison = poison

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot handle {self.poison}")
        time.sleep(self.delay)
        return [item * 10 for item in items]


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_every_request_gets_its_own_result_in_order() -> None:
    handler = Recorder(delay=0.01)

    async def scenario() -> list[int]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (4, 8))
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        await batcher.stop()
        return list(results)

    assert _run(scenario()) == [i * 10 for i in range(50)]
    assert [i for batch in handler.batches for i in batch] == list(range(50))


def test_batches_respect_the_current_bounds() -> None:
    handler = Recorder(delay=0.02)
    bounds = {"value": (2, 8)}

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: bounds["value"])
        batcher.start()
        first = asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await first
        bounds["value"] = (1, 3)
        await asyncio.gather(*(batcher.submit(i) for i in range(40, 60)))
        await batcher.stop()

    _run(scenario())
    sizes = [len(b) for b in handler.batches]
    assert max(sizes) == 8, "a long queue fills batches to the maximum"
    later = [len(b) for b in handler.batches if b[0] >= 40]
    assert max(later) <= 3, "a mode change applies to the next batch"


def test_a_lone_request_waits_no_longer_than_max_wait() -> None:
    handler = Recorder()

    async def scenario() -> float:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (16, 128), max_wait=0.02)
        batcher.start()
        started = time.perf_counter()
        await batcher.submit(1)
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    elapsed = _run(scenario())
    assert 0.015 <= elapsed < 0.2
    assert handler.batches == [[1]]


def test_the_token_budget_keeps_long_requests_in_smaller_batches() -> None:
    handler = Recorder(delay=0.01)

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (1, 128), token_budget=100)
        batcher.start()
        await asyncio.gather(*(batcher.submit(i, cost=30) for i in range(12)))
        await batcher.stop()

    _run(scenario())
    assert all(len(batch) <= 3 for batch in handler.batches)


def test_a_failing_request_fails_alone() -> None:
    handler = Recorder(poison=7)
    stats: list[BatchStats] = []

    async def scenario() -> list[object]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (16, 16), on_batch=stats.append)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(16)), return_exceptions=True)
        await batcher.stop()
        return list(results)

    results = _run(scenario())
    assert isinstance(results[7], ValueError)
    assert [r for i, r in enumerate(results) if i != 7] == [i * 10 for i in range(16) if i != 7]
    assert stats[0].isolated_failures == 1


def test_the_model_runs_on_one_thread_that_is_not_the_event_loop() -> None:
    handler = Recorder()

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (1, 4), name="full")
        batcher.start()
        await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()

    _run(scenario())
    assert len(handler.threads) == 1
    assert next(iter(handler.threads)).startswith("infer-full")


def test_requests_whose_callers_gave_up_are_skipped() -> None:
    handler = Recorder(delay=0.05)

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, bounds=lambda: (1, 1))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        abandoned = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        abandoned.cancel()
        await first
        await batcher.submit(3)
        await batcher.stop()

    _run(scenario())
    assert [1] in handler.batches and [3] in handler.batches
    assert [2] not in handler.batches


@pytest.mark.parametrize(("kwargs", "message"), [({"max_wait": -1}, "max_wait"), ({"token_budget": 0}, "token_budget")])
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(Recorder(), bounds=lambda: (1, 2), **kwargs)  # type: ignore[arg-type]
