"""The open-loop load generator against real HTTP servers on 127.0.0.1 that answer as programmed."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from model_service.load_generator import (
    LAG_BAR_MS,
    P99_MIN_SAMPLES,
    LoadReport,
    LoadSpec,
    Phase,
    invalid_because,
    percentile,
    phased_schedule,
    poisson_schedule,
    run_load_sync,
    run_phases,
)
from model_service.load_generator import Request as Sent
from model_service.service_process import free_port
from peakguard.cli import main


def _programmed_app(behaviour: dict[str, Any]) -> FastAPI:
    """Answers by the text sent: "ok", "shed" (429 + Retry-After), "full" (503 + Retry-After),
    "boom" (500), "slow" (200 after behaviour["delay"] s), "hang" (never within the test)."""
    app = FastAPI()

    @app.post("/v1/intent")
    async def intent(request: Request) -> JSONResponse:
        text = json.loads(await request.body())["text"]
        behaviour["seen"] = behaviour.get("seen", 0) + 1
        if text == "shed":
            return JSONResponse({"error": "overloaded"}, status_code=429, headers={"Retry-After": "1"})
        if text == "full":
            return JSONResponse({"error": "queue full"}, status_code=503, headers={"Retry-After": "1"})
        if text == "boom":
            return JSONResponse({"error": "bug"}, status_code=500)
        if text == "slow":
            await asyncio.sleep(behaviour["delay"])
        if text == "hang":
            await asyncio.sleep(3600)
        if text == "light":
            return JSONResponse({"intent": "top_up", "served_by": "model", "model": "light", "precision": "int8"})
        if text == "cached":
            return JSONResponse({"intent": "top_up", "served_by": "cache", "model": "full", "precision": "fp32"})
        return JSONResponse({"intent": "card_arrival"})

    return app


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Any]]]:
    behaviour: dict[str, Any] = {"delay": 0.0}
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(_programmed_app(behaviour), host="127.0.0.1", port=port,
                                             log_level="error", timeout_graceful_shutdown=1))  # fmt: skip
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1/intent", behaviour
    instance.should_exit = True
    thread.join(timeout=5)


def test_the_schedule_is_poisson_at_the_rate_and_seeded() -> None:
    schedule = poisson_schedule(200, 30, seed=4)
    gaps = [b - a for a, b in itertools.pairwise(schedule)]

    assert len(schedule) == pytest.approx(6000, rel=0.05)
    assert statistics.mean(gaps) == pytest.approx(1 / 200, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 200, rel=0.1)  # exponential: stdev = mean
    assert schedule == poisson_schedule(200, 30, seed=4)
    assert schedule != poisson_schedule(200, 30, seed=5)
    assert all(0 <= t < 30 for t in schedule) and schedule == sorted(schedule)


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 99) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_statuses_are_told_apart(server: tuple[str, dict[str, Any]]) -> None:
    url, _ = server
    texts = ["ok", "shed", "full", "boom"]

    report = run_load_sync(LoadSpec(url=url, rps=200, duration=2, texts=texts, seed=1)).to_dict()

    counts = report["status_counts"]
    assert report["sent"] == sum(counts.values()) > 300
    assert report["shed"] == counts["429"] + counts["503"]
    assert report["errors_5xx"] == counts["500"]
    assert report["completed_ok"] == counts["200"]
    assert all(counts[code] > 50 for code in ("200", "429", "503", "500"))
    assert report["transport_errors"] == report["dropped_by_generator"] == 0
    assert report["throughput_rps"] == pytest.approx(counts["200"] / 2)
    assert report["sent_rps"] == pytest.approx(report["sent"] / 2)


def test_the_loop_stays_open_when_the_server_slows(server: tuple[str, dict[str, Any]]) -> None:
    url, behaviour = server
    behaviour["delay"] = 0.5
    spec = LoadSpec(url=url, rps=100, duration=2, texts=["slow"], timeout=5, seed=2)

    report = run_load_sync(spec).to_dict()

    # A closed loop of one client would send about 4 requests in 2 s; the open loop keeps the schedule.
    assert report["sent"] == len(poisson_schedule(100, 2, seed=2))
    assert report["completed_ok"] == report["sent"]
    assert report["latency_ms"]["p50"] >= 500
    # Sends keep to the schedule rather than waiting on answers: a closed loop's lag would grow by
    # the 500 ms delay per request. The bound leaves room for a busy CI box (the test server shares
    # this process's GIL); 225 ms was seen there.
    assert report["send_lag_ms"]["p99"] < 500


def test_latency_from_the_schedule_is_never_less_than_from_the_send(server: tuple[str, dict[str, Any]]) -> None:
    url, _ = server
    report = run_load_sync(LoadSpec(url=url, rps=300, duration=1.5, texts=["ok"], seed=3)).to_dict()
    for key in ("p50", "p95", "p99", "max", "mean"):
        assert report["latency_ms"][key] >= report["latency_ms_from_send"][key]


def test_a_hanging_server_cannot_hold_the_run(server: tuple[str, dict[str, Any]]) -> None:
    url, _ = server
    started = time.monotonic()

    report = run_load_sync(LoadSpec(url=url, rps=50, duration=1, texts=["hang"], timeout=1.5)).to_dict()

    assert time.monotonic() - started < 1 + 1.5 + 2
    assert report["sent"] > 20
    assert report["transport_errors"] == report["sent"]
    assert report["completed_ok"] == 0 and report["latency_ms"]["p99"] is None


def test_arrivals_over_the_in_flight_bound_are_counted_not_lost(server: tuple[str, dict[str, Any]]) -> None:
    url, behaviour = server
    behaviour["delay"] = 1.0
    report = run_load_sync(
        LoadSpec(url=url, rps=200, duration=1, texts=["slow"], timeout=5, max_in_flight=10)
    ).to_dict()

    assert report["sent"] == 10
    assert report["dropped_by_generator"] == len(poisson_schedule(200, 1, seed=0)) - 10


def test_warm_up_requests_are_sent_but_not_reported(server: tuple[str, dict[str, Any]]) -> None:
    url, behaviour = server
    report = run_load_sync(LoadSpec(url=url, rps=200, duration=2, texts=["ok"], warmup=1)).to_dict()
    schedule = poisson_schedule(200, 2, seed=0)
    assert report["sent"] == sum(1 for t in schedule if t >= 1)
    assert behaviour["seen"] == len(schedule)
    assert report["throughput_rps"] == pytest.approx(report["completed_ok"] / 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "127.0.0.1:8080/v1/intent"}, "must be an http"),
        ({"rps": 0}, "rps must be a positive number"),
        ({"duration": -1}, "duration must be a positive number"),
        ({"texts": []}, "texts must be a non-empty list"),
        ({"texts": ["  "]}, "texts must be a non-empty list"),
        ({"warmup": 5}, "warmup must be"),
        ({"max_in_flight": 0}, "max_in_flight must be"),
    ],
)
def test_a_bad_spec_is_named(changes: dict[str, Any], message: str) -> None:
    spec: dict[str, Any] = {"url": "http://127.0.0.1:1/v1/intent", "rps": 1, "duration": 1, "texts": ["x"]}
    with pytest.raises(ValueError, match=message):
        LoadSpec(**(spec | changes))


def test_the_command_writes_the_report(server: tuple[str, dict[str, Any]], tmp_path: Path, capsys: Any) -> None:
    url, _ = server
    texts = tmp_path / "queries.txt"
    texts.write_text("ok\n\nshed\n")
    out = tmp_path / "load.json"

    code = main(["load", "--url", url, "--rps", "100", "--duration", "1", "--texts", str(texts), "--json", str(out)])

    assert code == 0
    report = json.loads(out.read_text())
    assert {"throughput_rps", "latency_ms", "send_lag_ms", "shed", "errors_5xx", "status_counts"} <= set(report)
    assert report["shed"] > 0 and report["completed_ok"] > 0
    assert "send lag p99" in capsys.readouterr().out


def test_the_command_sends_banking77_queries_or_its_own(
    server: tuple[str, dict[str, Any]], data_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    url, behaviour = server
    for source in (["--data", str(data_dir)], []):
        out = tmp_path / f"load{len(source)}.json"
        code = main(["load", "--url", url, "--rps", "100", "--duration", "0.5", "--json", str(out), *source])

        assert code == 0
        report = json.loads(out.read_text())
        assert report["completed_ok"] == report["sent"] > 20, source
    assert behaviour["seen"] > 40
    assert f"wrote {out}" in capsys.readouterr().out


def test_the_command_refuses_an_empty_texts_file(tmp_path: Path, capsys: Any) -> None:
    empty = tmp_path / "queries.txt"
    empty.write_text("\n  \n")
    assert main(["load", "--url", "http://127.0.0.1:1/", "--rps", "1", "--duration", "1", "--texts", str(empty)]) == 2
    assert f"{empty} holds no queries" in capsys.readouterr().err


def test_the_command_refuses_a_bad_rate(capsys: Any) -> None:
    assert main(["load", "--url", "http://127.0.0.1:1/", "--rps", "-3", "--duration", "1"]) == 2
    assert "rps must be a positive number" in capsys.readouterr().err


def test_a_phased_run_changes_rate_by_phase_and_records_every_request_as_it_ends(
    server: tuple[str, dict[str, Any]],
) -> None:
    """The drill's traffic: steady, a surge at 4x, back; every arrival recorded once, by phase and outcome."""
    url, _ = server
    phases = (Phase("steady", 1.0, 50), Phase("surge", 1.0, 200), Phase("after", 1.0, 50))
    seen: list[Sent] = []

    asyncio.run(run_phases(url, phases, ["ok", "shed", "boom"], record=seen.append, seed=7))

    expected = phased_schedule(phases, 7)
    assert len(seen) == len(expected), "every arrival ends up recorded exactly once"
    by_phase = Counter(request.phase for request in seen)
    assert by_phase == Counter(name for _, name in expected)
    assert by_phase["surge"] > 2.5 * by_phase["steady"]
    assert {request.outcome for request in seen} == {"answered", "shed", "failed"}
    assert all(request.latency is not None and request.latency > 0 for request in seen if request.outcome == "answered")
    assert all(request.status == 500 for request in seen if request.outcome == "failed")
    assert sorted(request.at for request in seen) == pytest.approx(sorted(at for at, _ in expected), abs=0.05)


def test_a_phased_run_counts_a_request_that_never_answers_as_failed(server: tuple[str, dict[str, Any]]) -> None:
    url, _ = server
    seen: list[Sent] = []
    asyncio.run(run_phases(url, (Phase("steady", 0.5, 20),), ["hang"], record=seen.append, timeout=1.0))
    assert seen
    assert {(request.outcome, request.status) for request in seen} == {("failed", 0)}


def test_each_answer_is_counted_by_what_answered_it(server: tuple[str, dict[str, Any]]) -> None:
    url, _ = server

    report = run_load_sync(LoadSpec(url=url, rps=150, duration=2, texts=["light", "cached", "ok"], seed=2)).to_dict()

    by = report["answered_by"]
    assert set(by) == {"light/int8", "cache", "unknown"}  # "ok" answers do not say
    assert sum(by.values()) == report["completed_ok"]
    assert all(count > 30 for count in by.values())
    assert report["lag_bar_ms"] == LAG_BAR_MS


def _report(lag_p99: float | None, answers: int) -> dict[str, Any]:
    return {"send_lag_ms": {"p99": lag_p99}, "completed_ok": answers}


def test_a_run_is_invalid_when_the_generator_sent_late_or_its_p99_rests_on_few_answers() -> None:
    assert invalid_because(_report(LAG_BAR_MS, P99_MIN_SAMPLES)) == []  # on the bar is still valid
    assert invalid_because(_report(None, P99_MIN_SAMPLES)) == []  # nothing sent late
    late = invalid_because(_report(LAG_BAR_MS + 0.1, P99_MIN_SAMPLES))
    assert late == [f"generator send lag p99 {LAG_BAR_MS + 0.1:.1f} ms > 5 ms: the generator fell behind"]
    few = invalid_because(_report(1.0, P99_MIN_SAMPLES - 1))
    assert few == ["p99 from 1999 answers < 2000: lengthen the run"]
    assert invalid_because(_report(1.0, 10), min_samples=0) == []  # a throughput figure needs no p99 samples


def test_goodput_counts_the_answers_within_the_slo() -> None:
    spec = LoadSpec(url="http://127.0.0.1:9/v1/intent", rps=10, duration=11, warmup=1, texts=["a"])
    latencies = (0.1, 0.2, 0.3, 0.5)
    report = LoadReport(
        spec=spec, measured_seconds=10, sent=5, latencies=latencies, latencies_from_send=latencies, send_lags=(),
        statuses={"200": 4, "503": 1}, shed=1, errors_5xx=0, transport_errors=0, dropped_by_generator=0,
    )  # fmt: skip
    assert report.goodput_rps(0.25) == pytest.approx(0.2)
    assert report.goodput_rps(0.3) == pytest.approx(0.3)  # an answer at the SLO is within it
    assert report.goodput_rps(0.01) == 0
