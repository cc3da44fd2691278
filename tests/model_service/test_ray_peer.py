"""The Ray Serve peer: the same answers as peakguard's runtime, Ray's backpressure at the bound it is
given, nothing left running once stopped; and how the comparison judges its figures."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_service import peer_comparison
from model_service.benchmark import sustainable_rate
from model_service.modes import OperatingMode
from model_service.peer_comparison import figures, run_against
from model_service.ray_peer import PeerSettings, RayServeProcess, queue_bound
from model_service.runtime import ModelRuntime
from model_service.service_process import ServiceStartError, free_port
from peakguard.cli import main
from tests.model_service.conftest import write_tiny_artifacts

TEXTS = ("where is my new card", "top up failed", "what is the exchange rate", "I lost my card", "refund please")


def test_the_queue_bound_is_littles_law_at_the_sustained_rate() -> None:
    assert queue_bound(0.26, 50.0) == 13  # 50 answers/s for 260 ms
    assert queue_bound(1.0, 120.0) == 120
    assert queue_bound(0.01, 10.0) == 2  # never below one at the replica and one queued
    with pytest.raises(ValueError, match="positive budget and rate"):
        queue_bound(0.0, 50.0)


def test_peer_settings_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="unknown setting 'max_queue'"):
        PeerSettings.from_mapping({"artifacts": "/m", "max_queue": 3})
    with pytest.raises(ValueError, match=r"max_queued must be -1 .* got 0"):
        PeerSettings(artifacts="/m", max_queued=0)
    with pytest.raises(ValueError, match="max_ongoing must be >= 1"):
        PeerSettings(artifacts="/m", max_ongoing=0)


async def _burst(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        return list(await asyncio.gather(*(client.post(url, json={"text": TEXTS[i % 5]}) for i in range(count))))


@pytest.mark.alone  # Ray's processes load both cores for a while: not beside the lab's timed shutdowns
@pytest.mark.timeout(240)
def test_the_peer_answers_as_peakguard_does_and_refuses_beyond_its_bound(tmp_path: Path) -> None:
    folder = write_tiny_artifacts(tmp_path / "models")
    runtime = ModelRuntime(folder.parent, folder.name, device="cpu")
    expected, _ = runtime.infer([runtime.encoder.ids(text) for text in TEXTS], OperatingMode())
    cpus = {min(os.sched_getaffinity(0))}
    settings = {"artifacts": str(folder.parent), "max_ongoing": 1, "max_queued": 1, "max_chars": 200}

    with RayServeProcess(settings, cpus=cpus, log_dir=tmp_path) as peer:
        url = f"{peer.url}/v1/intent"
        for text, prediction in zip(TEXTS, expected, strict=True):
            answer = httpx.post(url, json={"text": text}, timeout=30).json()
            assert (answer["intent"], answer["model"], answer["precision"], answer["version"]) == (
                prediction.intent, "full", "fp32", "v1",
            )  # fmt: skip
            assert answer["confidence"] == pytest.approx(prediction.confidence, abs=1e-3)
        assert httpx.post(url, json={"text": 5}, timeout=30).status_code == 400
        assert httpx.post(url, json={"text": "x" * 201}, timeout=30).status_code == 400
        assert os.sched_getaffinity(peer.pid or 0) == cpus

        # Two requests fit (one at the replica, one queued): a burst of 60 is mostly refused, with
        # the Retry-After that makes a load generator count it as shed, not as a failure.
        responses = asyncio.run(_burst(url, 60))
        statuses = [response.status_code for response in responses]
        refused = [response for response in responses if response.status_code == 503]
        assert set(statuses) == {200, 503}, statuses
        assert len(refused) >= 30 and all("retry-after" in r.headers for r in refused)
        started = _descendants(peer.pid or 0)
        assert {"gcs_server", "raylet"} <= {name for _, name in started}

    # Ray's GCS, raylet and workers (some in process groups of their own) went with it.
    deadline = time.monotonic() + 15
    while (left := [p for p in started if _alive(p[0])]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left


def _stat(pid: int) -> tuple[str, str, int]:
    """(name, state, parent) of a process, from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    return name, rest[0], int(rest[1])


def _descendants(root: int) -> set[tuple[int, str]]:
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, _, parent = _stat(int(entry.name))
            except (OSError, ValueError):
                continue
            parents.setdefault(parent, []).append((int(entry.name), name))
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[1] != "Z"  # a zombie has exited; only its parent's wait is missing
    except (OSError, ValueError):
        return False


def _run(p99_ms: float, answered_rps: float, *, lag_ms: float = 1.0, goodput: float | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"latency_ms": {"p99": p99_ms}, "throughput_rps": answered_rps,
                              "completed_ok": 2500, "send_lag_ms": {"p99": lag_ms}, "errors_5xx": 0}  # fmt: skip
    if goodput is not None:
        report["goodput_rps"] = goodput
    report["invalid_because"] = (
        ["generator send lag p99 9.0 ms > 5 ms: the generator fell behind"] if lag_ms > 5 else []
    )
    return report


def _reports(*, peer_lag: float = 1.0, peer_equal_rps: float = 50.0) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = {"overload_protected": _run(300, 58, goodput=55)}
    peer = {
        "unloaded": _run(120, 10), "unloaded_p99_ms": 120.0, "sustainable_rps": 45.0,
        "ramp": [{"kind": "confirm", "invalid_because": []}],
        "overload": _run(900, 40, lag_ms=peer_lag, goodput=22), "overload_unbounded": _run(9000, 41, goodput=0),
        "equal_rate": {"peakguard": _run(200, 50), "peer": _run(250, peer_equal_rps)},
    }  # fmt: skip
    return ours, peer


def test_the_comparison_judges_goodput_and_p99_at_an_equal_rate() -> None:
    judged = figures(*_reports())
    assert judged["peer_goodput_ratio"] == (pytest.approx(55 / 22), [])
    assert judged["peer_equal_rate_p99_ratio"] == (pytest.approx(200 / 250), [])
    assert judged["peer.overload_goodput_rps"] == (22, [])

    # The peer answered a tenth less at the "equal" rate: its p99 is not comparable.
    unequal = figures(*_reports(peer_equal_rps=45.0))["peer_equal_rate_p99_ratio"][1]
    assert unequal and "not an equal rate" in unequal[0]
    # The generator fell behind while the peer ran: its goodput, and the ratio to it, are invalid.
    lagging = figures(*_reports(peer_lag=9.0))
    assert lagging["peer_goodput_ratio"][1] and lagging["peer.overload_goodput_rps"][1]


def test_a_peer_that_answered_nothing_within_the_slo_loses_to_any_goodput() -> None:
    ours, peer = _reports()
    peer["overload"]["goodput_rps"] = 0
    assert figures(ours, peer)["peer_goodput_ratio"][0] == math.inf  # not 55 / 1e-9
    ours["overload_protected"]["goodput_rps"] = 0
    assert math.isnan(figures(ours, peer)["peer_goodput_ratio"][0])  # neither answered: no ratio


def test_a_peer_run_against_a_report_needs_its_service_run_and_its_model(tmp_path: Path) -> None:
    models_only = {"version": "v1", "settings": {}, "repetitions": [{"latency_ms_batch": {}}]}
    with pytest.raises(ValueError, match=r"no service run in repetition 1 .* --no-service report has none"):
        run_against(models_only, tmp_path, texts=TEXTS, unloaded_seconds=1, step_seconds=1, overload_seconds=1)
    with pytest.raises(ValueError, match=r"no service run in repetition 3 \(it has 1 repetitions"):
        run_against(models_only, tmp_path, texts=TEXTS, repetition=3, unloaded_seconds=1, step_seconds=1,
                    overload_seconds=1)  # fmt: skip
    recorded = {"version": "v7", "settings": {}, "repetitions": [{"sustainable_rps": 50.0}]}
    with pytest.raises(FileNotFoundError, match="v7: the report's model version is not under --artifacts"):
        run_against(recorded, tmp_path, texts=TEXTS, unloaded_seconds=1, step_seconds=1, overload_seconds=1)


def test_bench_peer_names_a_report_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench.json").write_text("{not json")
    code = main(["bench", "peer", "--artifacts", str(tmp_path), "--against", str(tmp_path / "bench.json")])
    assert code == 2
    assert "not a readable `bench model` JSON report" in capsys.readouterr().err


def test_a_peer_that_cannot_be_measured_costs_the_run_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    def would_not_start(*_args: object, **_kwargs: object) -> dict[str, Any]:
        raise ServiceStartError("python -m model_service.ray_peer exited with code 1")

    monkeypatch.setattr(peer_comparison, "compare", would_not_start)
    said: list[str] = []
    result = peer_comparison.compare_or_say_why(Path("/m/v1"), {}, log=said.append)
    assert result == {"error": "ServiceStartError: python -m model_service.ray_peer exited with code 1"}
    assert said and "peer not measured" in said[0]


def test_sustaining_nothing_is_an_answer_for_a_peer_and_an_error_for_the_service() -> None:
    # Nothing listens here: every request fails, so not even the first rate is sustained.
    url = f"http://127.0.0.1:{free_port()}"
    rate, steps = sustainable_rate(url, TEXTS, slo=0.5, start_rps=10, step_seconds=0.6, log=lambda _: None,
                                   none_is_an_answer=True)  # fmt: skip
    assert rate == 0.0 and steps and not steps[0]["sustained"]
    with pytest.raises(RuntimeError, match="did not sustain even 10 rps"):
        sustainable_rate(url, TEXTS, slo=0.5, start_rps=10, step_seconds=0.6, log=lambda _: None)
