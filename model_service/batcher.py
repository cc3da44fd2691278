"""Dynamic batching between the HTTP handlers and the model.

Requests wait in a queue; one collector task forms batches and hands each to the model's single
inference thread, so the event loop never runs the model and the model never sees the queue.
Batch size adapts to load: when at least `batch_min` requests are queued the batch leaves at once
with up to `batch_max` of them; when fewer are, it waits at most `max_wait` for more. A token
budget caps batches of long requests (attention cost grows with length). While one batch runs,
the next one forms. Results go back to each request in order; if a batch fails, its requests are
retried one by one so a single bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchStats", "DynamicBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchStats:
    size: int
    tokens: int
    queue_waits: tuple[float, ...]
    """Seconds each request waited before its batch left."""
    seconds: float
    """Time the handler took for the whole batch."""
    isolated_failures: int = 0


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    cost: int
    future: asyncio.Future[Out]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[In, Out]):
    def __init__(
        self,
        handler: Callable[[Sequence[In]], Sequence[Out]],
        *,
        bounds: Callable[[], tuple[int, int]],
        max_wait: float = 0.005,
        token_budget: int = 4096,
        name: str = "model",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """`handler` maps a batch of items to as many results, in order (it runs on its own thread).
        `bounds` returns the current (batch_min, batch_max); it is read for every batch, so a mode
        change applies to the next batch."""
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget}")
        self._handler = handler
        self._bounds = bounds
        self._max_wait = max_wait
        self._token_budget = token_budget
        self._on_batch = on_batch
        self._queue: deque[_Pending[In, Out]] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0
        """Requests taken from the queue whose batch has not finished."""

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, item: In, *, cost: int = 1) -> Out:
        """Queue one item and wait for its result (or its own exception)."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, max(1, cost), future))
        self._arrived.set()
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch_min, batch_max = self._bounds()
            deadline = self._queue[0].enqueued + self._max_wait
            # Few requests queued: give more a moment to arrive, never longer than max_wait.
            while len(self._queue) < batch_min and (remaining := deadline - time.perf_counter()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            batch = self._take(batch_max)
            self.in_flight += len(batch)
            try:
                await self._run(loop, batch)
            finally:
                self.in_flight -= len(batch)

    def _take(self, batch_max: int) -> list[_Pending[In, Out]]:
        batch: list[_Pending[In, Out]] = []
        tokens = 0
        while self._queue and len(batch) < batch_max:
            head = self._queue[0]
            if head.future.done():  # the caller gave up (timeout, disconnect)
                self._queue.popleft()
                continue
            if batch and tokens + head.cost > self._token_budget:
                break
            batch.append(self._queue.popleft())
            tokens += head.cost
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[In, Out]]) -> None:
        if not batch:
            return
        left = time.perf_counter()
        waits = tuple(left - p.enqueued for p in batch)
        items = [p.item for p in batch]
        failures = 0
        try:
            results = await loop.run_in_executor(self._executor, self._handler, items)
            if len(results) != len(items):
                raise RuntimeError(f"handler returned {len(results)} results for a batch of {len(items)}")
            outcomes: list[tuple[Out | None, BaseException | None]] = [(r, None) for r in results]
        except Exception:  # noqa: BLE001 (isolate the failure below, then report it per request)
            outcomes = []
            for item in items:
                try:
                    (single,) = await loop.run_in_executor(self._executor, self._handler, [item])
                    outcomes.append((single, None))
                except Exception as exc:  # noqa: BLE001 (delivered to that request's caller)
                    outcomes.append((None, exc))
                    failures += 1
        for pending, (result, error) in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result)  # type: ignore[arg-type]
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(batch),
                    tokens=sum(p.cost for p in batch),
                    queue_waits=waits,
                    seconds=time.perf_counter() - left,
                    isolated_failures=failures,
                )
            )
