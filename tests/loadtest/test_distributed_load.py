"""Distributed load: workers' HDR histograms merge exactly; the plan's bounds refuse before anything
is created; and four workers run as an Indexed Job on the lab's Kubernetes API (the played Job
controller runs each pod as a local process), start together, and leave nothing behind, even when
the coordinator is interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
from kubernetes import client

from lab.jobs import PlayedJobs
from lab.kube_api import LocalKubernetes
from loadtest import histograms
from loadtest.coordinator import LoadPlan, LoadRefusedError, run_distributed
from loadtest.job import WorkerPods
from loadtest.report import merge
from model_service.service_process import free_port

PLAN = {"url": "http://127.0.0.1:1/v1/intent", "rps": 100.0, "duration": 10.0, "workers": 4}


def _result(index: int, latencies: list[float], lags: list[float], **counts: int) -> dict[str, Any]:
    return {"index": index, "seed": index, "rps": 25.0, "startedAt": 1000.0, "sent": len(latencies),
            "ok": len(latencies), "shed": 0, "errors5xx": 0, "transportErrors": 0, "droppedByGenerator": 0, **counts,
            "latency": histograms.encode(histograms.of_seconds(latencies)),
            "lateness": histograms.encode(histograms.of_seconds(lags))}  # fmt: skip


def test_merged_percentiles_are_those_of_one_histogram_of_every_sample() -> None:
    rng = random.Random(7)  # noqa: S311 (reproducible samples)
    # Unequal workers: one slow, one with few samples; a mean of percentiles would be wrong here.
    samples = [[rng.expovariate(1 / scale) for _ in range(size)] for scale, size in
               ((0.02, 3000), (0.02, 3000), (0.2, 1500), (0.01, 200))]  # fmt: skip
    results = [_result(i, s, [0.001] * len(s)) for i, s in enumerate(samples)]

    report = merge(results, PLAN, expected_workers=4)

    everything = histograms.summary_ms(histograms.of_seconds([v for s in samples for v in s]))
    assert report["latencyMs"] == everything
    assert report["latencyMs"]["count"] == sum(len(s) for s in samples) == report["totals"]["ok"]
    averaged = sum(w["latencyMs"]["p99"] for w in report["workers"]) / 4
    assert abs(averaged - everything["p99"]) > 10, "the case would catch percentiles of percentiles"
    assert report["invalidBecause"] == []


def test_a_late_worker_or_a_missing_one_makes_the_figures_invalid() -> None:
    results = [_result(0, [0.01] * 3000, [0.001] * 3000), _result(1, [0.01] * 3000, [0.02] * 3000)]

    report = merge(results, PLAN, expected_workers=3)

    assert report["latenessMs"]["p99"] == pytest.approx(20, rel=0.01)
    assert [r.split(":")[0] for r in report["invalidBecause"]] == ["worker 1 sent late", "2 of 3 workers reported"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"rps": 100_000.0, "duration": 600.0}, "over the cap of 20,000,000"),
    ({"workers": 0}, "at least one worker"),
    ({"duration": -1.0}, "positive numbers"),
])  # fmt: skip
def test_a_plan_past_its_bounds_is_refused_before_anything_is_created(changes: dict[str, Any], message: str) -> None:
    plan = LoadPlan(**{**PLAN, **changes, "pods": WorkerPods(image="lab")})  # type: ignore[arg-type]
    nothing = object()

    with pytest.raises(LoadRefusedError, match=message):
        run_distributed(nothing, nothing, plan)  # no API is touched: the objects have no methods


@contextlib.contextmanager
def _target() -> Iterator[str]:
    """A bare HTTP endpoint answering every POST at once: what is measured is the workers."""
    port = free_port()
    loop = asyncio.new_event_loop()

    async def answer(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"intent": "card_lost", "model": "full", "precision": "fp32"})

    app = aiohttp.web.Application()
    app.router.add_post("/v1/intent", answer)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(aiohttp.web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1/intent"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@contextlib.contextmanager
def _cluster(tmp_path: Path) -> Iterator[tuple[LocalKubernetes, PlayedJobs, Any, Any]]:
    with LocalKubernetes() as kube, PlayedJobs(kube.store, workdir=tmp_path / "pods") as jobs:
        configuration = client.Configuration()
        configuration.host = kube.url
        api = client.ApiClient(configuration)
        yield kube, jobs, client.CoreV1Api(api), client.BatchV1Api(api)


def _processes(jobs: PlayedJobs) -> list[Any]:
    return [process for run in jobs._runs.values() for _, process in run.processes.values()]


@pytest.mark.alone  # five processes on two cores: it would skew the timing of whatever ran beside it
def test_four_workers_run_as_an_indexed_job_start_together_and_merge(tmp_path: Path) -> None:
    with _target() as url, _cluster(tmp_path) as (kube, jobs, core, batch):
        plan = LoadPlan(url=url, rps=200.0, duration=4.0, workers=4, pods=WorkerPods(image="lab"), start_lead=1.0,
                        pods_timeout=60.0)  # fmt: skip
        seen: list[Any] = []
        report = run_distributed(core, batch, plan, kube_url=kube.url, log=lambda _: seen.extend(_processes(jobs)))

        assert report["job"]["outcome"] == "Complete" and report["job"]["workersWithoutResult"] == []
        workers = report["workers"]
        assert [w["index"] for w in workers] == [0, 1, 2, 3]
        assert [w["seed"] for w in workers] == [0, 1, 2, 3], "each worker its own seed"
        assert all(w["rps"] == 50 for w in workers), "each a quarter of the rate"
        (start,) = {w["startedAt"] for w in workers}  # one start time, written once all were running
        # The barrier held: no worker began before the start, and none long after it (the bound is loose
        # on purpose: this box's two cores also run the coordinator, the API and the endpoint).
        assert all(start <= w["sendingFrom"] < start + 3.0 for w in workers), [
            w["sendingFrom"] - start for w in workers
        ]
        assert report["startSpreadSeconds"] == max(w["sendingFrom"] for w in workers) - min(
            w["sendingFrom"] for w in workers
        )
        # Whether each kept its schedule depends on this machine's load; the report must say so either way.
        late = [w["index"] for w in workers if w["latenessMs"]["p99"] > report["lagBarMs"]]
        assert [r for r in report["invalidBecause"] if "sent late" in r] == [
            r for r in report["invalidBecause"] if any(r.startswith(f"worker {i} ") for i in late)
        ]
        totals = report["totals"]
        assert 600 <= totals["sent"] <= 1000, "about 200 rps for 4 s (Poisson)"
        assert totals["ok"] == totals["sent"] == report["latencyMs"]["count"]
        assert sum(w["latencyMs"]["count"] for w in workers) == report["latencyMs"]["count"]
        # Nothing left behind: the Job and its ConfigMap deleted, the workers' processes ended.
        jobs.tick()
        assert kube.store.list("jobs") == [] and kube.store.list("configmaps") == []
        assert seen and all(process.poll() is not None for process in seen)


@pytest.mark.alone  # two worker processes at 50 rps each
def test_an_interrupted_coordinator_deletes_the_job_and_stops_its_workers(tmp_path: Path) -> None:
    with _target() as url, _cluster(tmp_path) as (kube, jobs, core, batch):
        plan = LoadPlan(url=url, rps=100.0, duration=60.0, workers=2, pods=WorkerPods(image="lab"), pods_timeout=60.0)
        running: list[Any] = []

        def interrupt_once_started(line: str) -> None:
            if "every worker running" in line:
                running.extend(_processes(jobs))
                raise KeyboardInterrupt  # Ctrl-C at the start of the load

        with pytest.raises(KeyboardInterrupt):
            run_distributed(core, batch, plan, kube_url=kube.url, log=interrupt_once_started)

        assert kube.store.list("jobs") == [] and kube.store.list("configmaps") == []
        jobs.tick()
        assert len(running) == 2 and all(process.poll() is not None for process in running)
        assert kube.store.list("pods") == []


def test_an_api_refusal_is_one_line_naming_the_namespace_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lab.kube_api import ApiStatus
    from peakguard.cli import main

    with _cluster(tmp_path) as (kube, _, _, _):
        kube.store.faults[("POST", "configmaps")] = ApiStatus(403, "Forbidden", "configmaps is forbidden")
        code = main(["loadtest", "run", "--url", "http://127.0.0.1:1/v1/intent", "--rps", "10", "--duration", "5",
                     "--workers", "1", "--image", "x", "--kube-url", kube.url])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "answered 403 Forbidden; your identity may not create Jobs and ConfigMaps in peakguard-load" in err
