"""chaos-drill end to end: the real `peakguard runbook run chaos-drill` against the lab, whose moto
holds the FIS templates the Pulumi program declares for dev (lab.fis plays `pulumi up` for them).

moto's FIS runs an experiment as a state machine and injects nothing (lab/fis.py says what it
lacks), so the fault that breaks the SLO here is the lab's own: every pod's first layer made to sleep
past the SLO before each batch (the service's chaos setting). The experiment's states advance on wall
time (`progression_seconds`), as a real one's do.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import boto3
import httpx
import pytest

from lab.fis import progression_seconds
from model_service.load_generator import SAMPLE_QUERIES, LoadSpec, run_load_sync
from tests.runbooks.e2e.conftest import World, _records, _wait

CHAOS = {"chaos": True}
"""The pods accept `PUT /admin/chaos` (a slow layer)."""


def _drill(world: World, *args: str) -> list[str]:
    return ["runbook", "run", "chaos-drill", "--env", "dev", "--kube-url", world.kube_url, "--window", "1",
            "--experiment", "model-pod-delete", *args]  # fmt: skip


def _fis(world: World) -> Any:
    return boto3.client("fis", **world.lab.client_args())


def _experiments(world: World) -> list[dict[str, Any]]:
    template = world.targets.chaos_experiments["model-pod-delete"]
    fis = _fis(world)
    return [fis.get_experiment(id=e["id"])["experiment"]
            for e in fis.list_experiments(experimentTemplateId=template)["experiments"]]  # fmt: skip


def _at(record: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(record["at"]).timestamp()


def _slow_every_pod(world: World, seconds: float) -> None:
    """Every Ready pod's first layer sleeps `seconds` before each batch (0: the slow layer is lifted)."""
    auth = {"authorization": f"Bearer {world.token}"}
    slow = {"layer": "block0", "seconds": seconds} if seconds > 0 else None
    for _, url in world.ready_backends():
        answer = httpx.put(f"{url}/admin/chaos", json={"slow_layer": slow}, headers=auth, timeout=10)
        answer.raise_for_status()


@pytest.mark.parametrize("world", [CHAOS], indirect=True)
def test_an_experiment_the_service_rides_out_runs_to_its_end_and_the_drill_succeeds(world: World) -> None:
    progression_seconds(world.aws_env["AWS_ENDPOINT_URL"], 3)  # pending -> ... -> completed in about 9 s
    _open_loop_clients(world, seconds=90)  # enough answers for every gate, however busy the machine

    done = world.peakguard(*_drill(world, "--yes"), timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    (experiment,) = _experiments(world)
    assert experiment["state"]["status"] == "completed"
    records = _records(world)
    run_id = records[0]["runId"] if "runId" in records[0] else next(world.journal_dir.glob("*.jsonl")).stem
    assert experiment["tags"]["peakguard:run"] == run_id, "the run's experiment, found again by its tag"
    (ended,) = [r for r in records if r["event"] == "step_watch_ended"]
    assert ended["ok"] and ended["readings"] >= 2, "watched for the experiment's length, not read once"
    readings = [r["gate"] for r in records if r["event"] == "step_watch_reading"]
    assert [g["verdict"] for g in readings] == ["pass"], "the service held its SLO throughout"
    assert readings[0]["raw"]["answered"] >= 100, "judged on enough answers for a p99"
    assert not [r for r in records if r["event"] == "rollback_started"]


@pytest.mark.parametrize("world", [CHAOS], indirect=True)
def test_the_drill_stops_the_experiment_within_one_reading_once_the_slo_breaks(world: World) -> None:
    # Left alone it would run 90 s; a stop lands within 30 s (moto's next transition).
    progression_seconds(world.aws_env["AWS_ENDPOINT_URL"], 30)
    # Open-loop clients from the start, as a real service's are: the lab's steady sender waits for each
    # answer, so on a busy machine (or a slowed service) it starves the gates of the 100 answers a
    # p99 needs, and the drill refuses to start (trigger inconclusive) or stops as blind, not broken.
    _open_loop_clients(world, seconds=150)
    runner = world.start(*_drill(world, "--yes"))

    def watching() -> bool:
        assert runner.poll() is None, "the drill ended before it watched:\n" + _output(world)
        return any(r["event"] == "step_watch_reading" for r in _safe_records(world))

    _wait(watching, timeout=120)
    (experiment,) = _experiments(world)
    assert experiment["state"]["status"] in ("pending", "initiating", "running")

    broke = time.time()
    _slow_every_pod(world, 1.5)  # every batch now takes longer than dev's 1 s p99 SLO
    # The fault is over once the drill stops the experiment (as FIS undoes its actions): the service
    # recovers, and the run's health gate after the rollback passes.
    _wait(lambda: any(r["event"] == "rollback_started" for r in _safe_records(world)), timeout=60)
    _slow_every_pod(world, 0.0)
    runner.wait(timeout=120)

    assert runner.returncode == 1
    records = _records(world)
    failures = [r for r in records if r["event"] == "step_watch_reading" and r["gate"]["verdict"] == "fail"]
    assert len(failures) == 1, json.dumps(records[-10:], indent=1)
    (failed,) = failures
    # Slowed past the SLO, the pods' admission control refuses most requests: refusals break first.
    assert failed["gate"]["value"] > 1.0 and failed["gate"]["raw"]["refusals"] > 1.0
    (stopping,) = [r for r in records if r["event"] == "step_note" and r["text"].startswith("stopping FIS experiment")]
    # Within one gate interval: the failing reading is the one under way at the break or the next
    # (its window began at most one 1 s poll after the break), and the stop follows it at once.
    began = _at(failed) - failed["gate"]["raw"]["seconds"]
    assert began <= broke + 1.0 + 1.0, json.dumps(records[-8:], indent=1)
    assert _at(stopping) - _at(failed) <= 1.0
    assert _at(stopping) - broke <= 5 + 1 + 5, "a window is 1 s, stretched to at most 5 s for 100 answers"
    (experiment,) = _experiments(world)
    assert experiment["state"]["status"] == "stopped", "stopped in FIS, not only in the journal"
    finished = next(r for r in reversed(records) if r["event"] == "run_finished")
    assert finished["status"] == "rolled-back" and "broke while watched" in finished["reason"]


def _open_loop_clients(world: World, *, seconds: float) -> None:
    """40 requests a second through the lab's load balancer for `seconds`, whatever the answers take."""
    spec = LoadSpec(f"{world.proxy_url}/v1/intent", rps=40, duration=seconds, texts=SAMPLE_QUERIES, timeout=10)
    threading.Thread(target=run_load_sync, args=(spec,), daemon=True).start()


def _output(world: World) -> str:
    return "\n".join(path.read_text() for path in sorted(world.journal_dir.glob("runner-*.out")))


def _safe_records(world: World) -> list[dict[str, Any]]:
    try:
        return _records(world)
    except (StopIteration, json.JSONDecodeError):
        return []  # no journal yet, or its last line half-written
