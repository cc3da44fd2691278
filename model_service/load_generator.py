"""Open-loop load: Poisson arrivals at a fixed rate for a bounded time, whatever the server does.

A closed-loop tool (N clients, each waiting for its answer) slows down when the server does and so
hides exactly the queueing that turned 200 ms into 12 s. Here the arrival schedule is drawn up
front (exponential gaps, seeded) and every arrival is its own task. Latency is measured from the
*scheduled* send time, which charges the server for the wait a late send would otherwise hide
(coordinated omission); how late the generator itself sent is reported as `send_lag_ms`, because
on a 2-core box it competes with the server for CPU.

aiohttp, not httpx, for the client: the generator must outrun the service it overloads, and from
one core httpx's AsyncClient (same loop, max_connections 4096) already fell behind at 500 req/s
(send lag p99 117 ms, p50 latency 5 s from a server idling on the other core) and collapsed at
1000, where aiohttp's send lag p99 was 1.3 ms.

The generator's own ceiling on this 2-core machine is about 2500 req/s from one core. Measured
against a raw asyncio server that answers every POST with a fixed 200, pinned to the other core
(where it stayed about a quarter busy), in 4 s runs with 1 s of warm-up:

    taskset -c 0 peakguard load --url http://127.0.0.1:18081/v1/intent --rps R --duration 4 --warmup 1

R = 1000, 2000, 2500: send lag p99 1.3-2.4 ms, latency p99 2.5-6.4 ms, in every run. R = 2750 and
3000: sometimes fine, more often behind (send lag p99 0.1-0.5 s). R = 3500: behind for good (send
lag p99 0.9 s, the in-flight bound reached, a third of the arrivals dropped). A report whose
`send_lag_ms` p99 exceeds `LAG_BAR_MS` measured the generator as much as the server: its figures
are invalid (`invalid_because`), and a benchmark refuses to report them as measured.

The run stops by itself: no arrival after `duration`, nothing awaited after `duration + timeout`;
at most `max_in_flight` requests are open at once (arrivals beyond that are counted as
`dropped_by_generator`, never silently lost), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

__all__ = [
    "LAG_BAR_MS", "P99_MIN_SAMPLES", "SAMPLE_QUERIES", "LoadReport", "LoadSpec", "Phase", "Request", "invalid_because",
    "percentile", "phased_schedule", "poisson_schedule", "query_texts", "run_load", "run_load_sync", "run_phases",
]  # fmt: skip

SHED_STATUSES = (429, 503)

LAG_BAR_MS = 5.0
"""The one bar for the generator: a run whose send lag p99 is above it sent late enough to shape
what it measured (its arrivals bunch up after each stall), so its figures are invalid. Every
benchmark and drill judges its runs by this constant; 5 ms is twice the lag the generator showed
at 2500 req/s against an idle server (above), a fraction of any SLO here."""

P99_MIN_SAMPLES = 2000
"""Fewest answers a reported p99 is taken from: with 2000, the 99th percentile rests on the 20
slowest answers, not on one or two."""
_UNITS = {"rps": "requests per second", "duration": "seconds", "timeout": "seconds"}

SAMPLE_QUERIES = (  # what a load run sends when given no texts: banking customer-service questions
    "I am still waiting on my card?",
    "How do I top up my account with a bank transfer?",
    "Why was I charged a fee for my card payment?",
    "My card has been swallowed by the ATM, what should I do?",
    "What exchange rate do you use for foreign currency payments?",
    "Can I cancel a transfer I made by mistake this morning?",
    "I think someone has used my card without permission",
    "How long does it take for my refund to show up?",
    "I forgot my PIN, how can I reset it?",
    "Why is my transfer still pending after two days?",
    "The ATM gave me less cash than I asked for",
    "How do I freeze my card? I can't find it anywhere",
    "Can I get a virtual card for online shopping?",
    "My contactless payments stopped working",
    "Which currencies can I hold in my account?",
    "Why did my top-up by card fail?",
    "How do I verify my identity to unlock my account?",
    "I was charged twice for the same purchase",
    "Where can I find my account's IBAN?",
    "I want to close my account, how do I do that?",
)


def query_texts(data: Path | None) -> list[str]:
    """Request texts for a load or a batch: banking77's test queries under `data` (a data folder
    holding banking77/), else `SAMPLE_QUERIES`."""
    if data is None:
        return list(SAMPLE_QUERIES)
    from model_service.datasets import load_banking77

    return list(load_banking77(data / "banking77").test.texts)


@dataclass(frozen=True)
class LoadSpec:
    url: str
    """Full URL of the endpoint, e.g. http://127.0.0.1:8080/v1/intent."""
    rps: float
    """Mean arrival rate (Poisson)."""
    duration: float
    """Seconds of arrivals."""
    texts: Sequence[str]
    """Query texts; each request picks one at random (seeded)."""
    timeout: float = 30.0
    """Seconds a request may take; a timeout counts as a transport error."""
    seed: int = 0
    """Seeds the arrival schedule and the text each request carries: equal seeds, equal runs."""
    max_in_flight: int = 4096
    """Open requests at most, so memory stays bounded; arrivals beyond it count as dropped_by_generator."""
    warmup: float = 0.0
    """Seconds at the start whose requests are sent but not reported."""

    def __post_init__(self) -> None:
        scheme = urlparse(self.url).scheme
        if scheme not in ("http", "https") or not urlparse(self.url).netloc:
            raise ValueError(f"url {self.url!r} must be an http(s) URL, e.g. http://127.0.0.1:8080/v1/intent")
        for name in ("rps", "duration", "timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of {_UNITS[name]}, got {value!r}")
        if not 0 <= self.warmup < self.duration:
            raise ValueError(
                f"warmup must be >= 0 and shorter than duration ({self.duration} s), got {self.warmup}: "
                "lengthen the run or shorten the warm-up"
            )
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight} (default 4096)")
        if not self.texts or not all(isinstance(text, str) and text.strip() for text in self.texts):
            raise ValueError(
                f"texts must be a non-empty list of non-empty query strings, got {len(self.texts)} texts; "
                "pass at least one query (SAMPLE_QUERIES holds built-in ones)"
            )


def poisson_schedule(rps: float, duration: float, seed: int) -> list[float]:
    """Arrival offsets in seconds from the start: exponential gaps with mean 1/rps, within `duration`."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible schedule, not a secret)
    offsets, now = [], rng.expovariate(rps)
    while now < duration:
        offsets.append(now)
        now += rng.expovariate(rps)
    return offsets


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary_ms(seconds: Sequence[float], keys: Sequence[str] = ("p50", "p95", "p99", "max", "mean")) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    table = {
        "p50": percentile(seconds, 50),
        "p95": percentile(seconds, 95),
        "p99": percentile(seconds, 99),
        "max": max(seconds, default=None),
        "mean": sum(seconds) / len(seconds) if seconds else None,
    }
    return {key: ms(table[key]) for key in keys}


@dataclass(frozen=True)
class LoadReport:
    spec: LoadSpec
    measured_seconds: float
    """Length of the reported window (duration minus warm-up)."""
    sent: int
    """Requests sent whose scheduled time fell after the warm-up."""
    latencies: tuple[float, ...]
    """Seconds from scheduled send to answer, 200s only."""
    latencies_from_send: tuple[float, ...]
    """Seconds from the actual send to answer, 200s only."""
    send_lags: tuple[float, ...]
    """Seconds each request started after its scheduled time."""
    statuses: dict[str, int]
    shed: int
    """429 or 503 answers with Retry-After: the server shedding on purpose."""
    errors_5xx: int
    """5xx answers that are not sheds."""
    transport_errors: int
    """Connection errors, timeouts, and requests still open at duration + timeout."""
    dropped_by_generator: int
    """Arrivals not sent because max_in_flight requests were already open."""
    answered_by: dict[str, int] = field(default_factory=dict)
    """What answered the 200s, as each answer says: `model/precision` (e.g. full/fp32) or `cache`."""

    @property
    def completed_ok(self) -> int:
        return len(self.latencies)

    def goodput_rps(self, slo: float) -> float:
        """Answers per second that came within `slo` seconds of their scheduled send."""
        return sum(latency <= slo for latency in self.latencies) / self.measured_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.spec.url,
            "target_rps": self.spec.rps,
            "duration_s": self.spec.duration,
            "warmup_s": self.spec.warmup,
            "sent": self.sent,
            "sent_rps": self.sent / self.measured_seconds,
            "completed_ok": self.completed_ok,
            "throughput_rps": self.completed_ok / self.measured_seconds,
            "latency_ms": _summary_ms(self.latencies),
            "latency_ms_from_send": _summary_ms(self.latencies_from_send),
            "send_lag_ms": _summary_ms(self.send_lags, ("p50", "p99", "max")),
            "status_counts": dict(sorted(self.statuses.items())),
            "shed": self.shed,
            "errors_5xx": self.errors_5xx,
            "transport_errors": self.transport_errors,
            "dropped_by_generator": self.dropped_by_generator,
            "answered_by": dict(sorted(self.answered_by.items())),
            "lag_bar_ms": LAG_BAR_MS,
        }


def invalid_because(report: dict[str, Any], *, min_samples: int = P99_MIN_SAMPLES) -> list[str]:
    """Why a run's figures cannot be reported as measured (empty: they can): the generator sent late
    (send lag p99 over `LAG_BAR_MS`), or its p99 rests on fewer than `min_samples` answers."""
    reasons = []
    lag = report["send_lag_ms"]["p99"]
    if lag is not None and lag > LAG_BAR_MS:
        reasons.append(f"generator send lag p99 {lag:.1f} ms > {LAG_BAR_MS:g} ms: the generator fell behind")
    if report["completed_ok"] < min_samples:
        reasons.append(f"p99 from {report['completed_ok']} answers < {min_samples}: lengthen the run")
    return reasons


def _answered_by(body: bytes) -> str:
    """`model/precision` or `cache` from an answer's JSON; `unknown` when it does not say."""
    try:
        answer = json.loads(body)
    except ValueError:
        return "unknown"
    if not isinstance(answer, dict):
        return "unknown"
    if answer.get("served_by") == "cache":
        return "cache"
    model, precision = answer.get("model"), answer.get("precision")
    return f"{model}/{precision}" if model and precision else "unknown"


@dataclass
class _Tally:
    """What a run counts as it goes; frozen into a LoadReport at the end."""

    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    latencies_from_send: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    shed: int = 0
    errors_5xx: int = 0
    transport_errors: int = 0
    dropped_by_generator: int = 0
    answered_by: Counter[str] = field(default_factory=Counter)

    def freeze(self, spec: LoadSpec) -> LoadReport:
        return LoadReport(
            spec=spec, measured_seconds=spec.duration - spec.warmup, sent=self.sent,
            latencies=tuple(self.latencies), latencies_from_send=tuple(self.latencies_from_send),
            send_lags=tuple(self.send_lags), statuses=dict(self.statuses), shed=self.shed,
            errors_5xx=self.errors_5xx, transport_errors=self.transport_errors,
            dropped_by_generator=self.dropped_by_generator, answered_by=dict(self.answered_by),
        )  # fmt: skip


@dataclass(frozen=True)
class _Done:
    """How one request ended, as the driver saw it."""

    scheduled: float
    sent: float
    done: float
    status: int | None
    """None: no answer (a connection error, a timeout, cancelled at the end)."""
    retry_after: bool
    body: bytes


async def _drive(url: str, arrivals: Sequence[tuple[float, bytes, Any]], *, timeout: float, max_in_flight: int,
                 on_sent: Callable[[Any, float], None], on_done: Callable[[Any, _Done], None],
                 on_dropped: Callable[[Any], None], stop_after: float,
                 stop_when: Callable[[], bool] | None = None) -> None:  # fmt: skip
    """Send each (offset, body, tag) at its offset from now, whatever the server does; report each
    one's end to `on_done`. Nothing is awaited past `stop_after` seconds from the start; no arrival
    is sent once `stop_when()` says so (those still open finish)."""
    in_flight = 0
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=False)
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def one(scheduled: float, body: bytes, tag: Any) -> None:
            nonlocal in_flight
            sent = time.perf_counter()
            on_sent(tag, max(0.0, sent - scheduled))  # the lag is taken when the request starts
            status: int | None = None
            retry_after, answer = False, b""
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    status, retry_after = response.status, "Retry-After" in response.headers
            except (TimeoutError, aiohttp.ClientError, OSError, asyncio.CancelledError) as exc:
                on_done(tag, _Done(scheduled, sent, time.perf_counter(), None, False, b""))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            finally:
                in_flight -= 1
            on_done(tag, _Done(scheduled, sent, time.perf_counter(), status, retry_after, answer))

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for offset, body, tag in arrivals:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop_when is not None and stop_when():
                break
            if in_flight >= max_in_flight:
                on_dropped(tag)
                continue
            in_flight += 1
            task = asyncio.create_task(one(start + offset, body, tag))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # Stragglers get until stop_after; the session's own timeout normally ends them first. One
        # yield first, so that every task has started and will count its own outcome if cancelled
        # (a task cancelled before its first step never runs, and its request would go uncounted).
        await asyncio.sleep(0)
        remaining = start + stop_after - time.perf_counter()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=max(0.0, remaining))
            for task in pending:
                task.cancel()  # reported as no answer by the task itself
            await asyncio.gather(*pending, return_exceptions=True)


async def run_load(spec: LoadSpec) -> LoadReport:
    schedule = poisson_schedule(spec.rps, spec.duration, spec.seed)
    rng = random.Random(spec.seed + 1)  # noqa: S311
    arrivals = [(offset, json.dumps({"text": rng.choice(list(spec.texts))}).encode(), offset >= spec.warmup)
                for offset in schedule]  # fmt: skip
    report = _Tally()

    def sent(counted: bool, lag: float) -> None:
        if counted:
            report.sent += 1
            report.send_lags.append(lag)

    def done(counted: bool, end: _Done) -> None:
        if not counted:
            return
        if end.status is None:
            report.transport_errors += 1
            return
        report.statuses[str(end.status)] += 1
        if end.status == 200:
            report.latencies.append(end.done - end.scheduled)
            report.latencies_from_send.append(end.done - end.sent)
            report.answered_by[_answered_by(end.body)] += 1
        elif end.status in SHED_STATUSES and end.retry_after:
            report.shed += 1
        elif end.status >= 500:
            report.errors_5xx += 1

    def dropped(counted: bool) -> None:
        report.dropped_by_generator += counted

    await _drive(spec.url, arrivals, timeout=spec.timeout, max_in_flight=spec.max_in_flight, on_sent=sent,
                 on_done=done, on_dropped=dropped, stop_after=spec.duration + spec.timeout)  # fmt: skip
    return report.freeze(spec)


@dataclass(frozen=True)
class Phase:
    """A stretch of a load profile: `rps` Poisson arrivals for `seconds`."""

    name: str
    seconds: float
    rps: float


@dataclass(frozen=True)
class Request:
    """One request of a phased run, as its client saw it."""

    at: float
    """Scheduled send time, seconds from the run's start."""
    phase: str
    outcome: str
    """`answered` (200), `shed` (429/503 with Retry-After), `failed` (any other status, or no answer
    within the timeout: a connection error, a reset, a timeout) or `dropped` (never sent: the
    generator's in-flight bound)."""
    status: int
    """The HTTP status; 0 when there was none."""
    latency: float | None
    """Seconds from the scheduled send to the answer (answered only): coordinated omission charged."""
    lag: float
    """Seconds the generator sent it late."""
    served_by: str = ""
    """What answered an answered request, as the service says: model or cache."""


def phased_schedule(phases: Sequence[Phase], seed: int) -> list[tuple[float, str]]:
    """(offset from the start, phase name) of every arrival: each phase's own Poisson schedule, in turn."""
    arrivals, start = [], 0.0
    for index, phase in enumerate(phases):
        arrivals += [
            (start + offset, phase.name) for offset in poisson_schedule(phase.rps, phase.seconds, seed + index)
        ]
        start += phase.seconds
    return arrivals


async def run_phases(url: str, phases: Sequence[Phase], texts: Sequence[str], *, record: Callable[[Request], None],
                     seed: int = 0, timeout: float = 30.0, max_in_flight: int = 4096,
                     stop_when: Callable[[], bool] | None = None) -> None:  # fmt: skip
    """Open-loop load whose rate changes by phase (steady, a surge, back); every request's end goes
    to `record` as it happens, so a caller can watch the run live. It stops by itself, at the end of
    its last phase or, earlier, once `stop_when()` says so."""
    if not phases or not texts:
        raise ValueError("a phased run needs at least one phase and one query text")
    rng = random.Random(seed + 1)  # noqa: S311
    arrivals = [(offset, json.dumps({"text": rng.choice(list(texts))}).encode(), name)
                for offset, name in phased_schedule(phases, seed)]  # fmt: skip

    def sent(tag: Any, lag: float) -> None:
        """The lag is in each Request (sent minus scheduled)."""

    def done(tag: Any, end: _Done) -> None:
        at = end.scheduled - started
        if end.status == 200:
            served_by = ""
            with contextlib.suppress(ValueError, AttributeError):
                served_by = str(json.loads(end.body).get("served_by", ""))
            record(Request(at, tag, "answered", 200, end.done - end.scheduled, end.sent - end.scheduled, served_by))
        elif end.status is not None and end.status in SHED_STATUSES and end.retry_after:
            record(Request(at, tag, "shed", end.status, None, end.sent - end.scheduled))
        else:
            record(Request(at, tag, "failed", end.status or 0, None, end.sent - end.scheduled))

    def dropped(tag: Any) -> None:
        record(Request(time.perf_counter() - started, tag, "dropped", 0, None, 0.0))

    started = time.perf_counter()
    total = sum(phase.seconds for phase in phases)
    await _drive(url, arrivals, timeout=timeout, max_in_flight=max_in_flight, on_sent=sent, on_done=done,
                 on_dropped=dropped, stop_after=total + timeout, stop_when=stop_when)  # fmt: skip


def run_load_sync(spec: LoadSpec) -> LoadReport:
    return asyncio.run(run_load(spec))
