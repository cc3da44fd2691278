"""One worker's capacity: the highest rate one load worker sends on schedule from one core, and so
how many workers a target rate needs (`peakguard loadtest capacity`).

The worker's generator (model_service.load_generator, as in a pod) runs in this process pinned to
one core; the endpoint is a bare server answering every POST at once, in its own process pinned to
another core, so what saturates is the worker. Each rate runs for a few seconds; a rate counts as
sustained when the worker's lateness p99 (how late it sent after each scheduled time) stays within
the generator's one bar (LAG_BAR_MS) and every request was sent and answered. Refused on a machine
already busy (the 1-minute load average over half a core per core): the figure would measure the
neighbours.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest import histograms

__all__ = ["BUSY_LOAD_PER_CORE", "TARGET_RPS", "ceiling_of", "measure", "serve"]

TARGET_RPS = 100_000
"""The seed's load tester: 100k+ requests a second."""
BUSY_LOAD_PER_CORE = 0.5


def serve(port: int) -> None:
    """The bare endpoint: every POST answered 200 with a small JSON body, nothing else done."""
    import aiohttp.web

    async def answer(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"intent": "card_lost", "model": "full", "precision": "fp32"})

    app = aiohttp.web.Application()
    app.router.add_post("/v1/intent", answer)
    aiohttp.web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def ceiling_of(rows: Sequence[dict[str, Any]]) -> float | None:
    """The highest rate at which it and every lower rate were sustained (one that falls behind
    below a rate that kept up was noise, and the lower figure is the one to plan with)."""
    ceiling: float | None = None
    for row in sorted(rows, key=lambda r: float(r["rps"])):
        if not row["sustained"]:
            break
        ceiling = float(row["rps"])
    return ceiling


def _wait_for(port: int, timeout: float = 30.0) -> None:
    import socket

    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the bare endpoint did not listen on 127.0.0.1:{port} within {timeout:g} s")


def measure(rates: Sequence[float], seconds: float, *, worker_core: int = 0, server_core: int = 1) -> dict[str, Any]:
    import socket

    from model_service.load_generator import LAG_BAR_MS, SAMPLE_QUERIES, LoadSpec, run_load_sync

    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD_PER_CORE * cores:
        raise RuntimeError(
            f"the machine is busy (1-minute load average {busy:.2f} on {cores} cores, over {BUSY_LOAD_PER_CORE} a "
            "core): a worker's capacity measured now would measure its neighbours; run it on a quiet machine"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(  # noqa: S603 (this interpreter, this module)
        [sys.executable, "-m", "loadtest.capacity", "--serve", str(port)], stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {server_core % cores}),
    )  # fmt: skip
    before = os.sched_getaffinity(0)
    rows: list[dict[str, Any]] = []
    try:
        _wait_for(port)
        os.sched_setaffinity(0, {worker_core % cores})
        url = f"http://127.0.0.1:{port}/v1/intent"
        for rate in rates:
            report = run_load_sync(LoadSpec(url=url, rps=rate, duration=seconds, texts=SAMPLE_QUERIES, timeout=5.0,
                                            warmup=min(1.0, seconds / 4)))  # fmt: skip
            lateness = histograms.summary_ms(histograms.of_seconds(report.send_lags))
            latency = histograms.summary_ms(histograms.of_seconds(report.latencies))
            lost = report.sent - report.completed_ok + report.dropped_by_generator
            on_time = lateness["p99"] is not None and lateness["p99"] <= LAG_BAR_MS and lost == 0
            rows.append({"rps": rate, "sent": report.sent, "answered": report.completed_ok, "lost": lost,
                         "latenessMs": lateness, "latencyMs": latency, "sustained": on_time})  # fmt: skip
            # Asyncio's loop of the finished run is closed; a breath so sockets in TIME_WAIT settle.
            asyncio.set_event_loop(None)
            time.sleep(0.5)
    finally:
        os.sched_setaffinity(0, before)
        server.terminate()
        server.wait(timeout=10)
    ceiling = ceiling_of(rows)
    return {
        "seconds": seconds,
        "cores": {"worker": worker_core % cores, "server": server_core % cores, "machine": cores},
        "loadAverageBefore": round(busy, 2),
        "lagBarMs": LAG_BAR_MS,
        "rates": rows,
        "ceilingRps": ceiling,
        "workersFor100k": math.ceil(TARGET_RPS / ceiling) if ceiling else None,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
