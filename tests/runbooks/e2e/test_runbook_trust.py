"""Runbooks you can trust at 3 a.m.: each finding of the on-call trial, reproduced on the lab (the
real `peakguard runbook` command, moto, the local Kubernetes API, the played controllers, the LOR
proxy, real serving processes) and shown fixed; and the emergency-stop success path under a surge.

In the lab the "surge" is the traffic against the capacity the plan is told served before the run:
`--replica-rps 1` with one ready replica is a fleet that carried 1 request/s now receiving about
40; `--replica-rps 1000` is a fleet far from its limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.targets import hold_parameter_name
from lab.kube_api import ApiStatus
from tests.runbooks.e2e.conftest import PEAKGUARD, PROJECT_DIR, World, _records, _wait

SURGE = ("--qps", "2", "--replica-rps", "1", "--capacity-timeout", "60")
"""Demand about 40x the capacity that served before the run; 3 replicas planned (1.3 x 2)."""
DEGRADED = {"model": "light", "precision": "int8", "shedding": True}
CAPACITY_ONLY = ("--qps", "10", "--replica-rps", "10", "--model", "full", "--precision", "fp32", "--shedding", "off",
                 "--capacity-timeout", "60")  # fmt: skip


def _journal_events(world: World) -> list[str]:
    return [r["event"] for r in _records(world)] if list(world.journal_dir.glob("*.jsonl")) else []


def _wait_for_record(world: World, runner: subprocess.Popen[str], match: Any, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(world.journal_dir.glob("*.jsonl")) and any(match(r) for r in _records(world)):
            return
        if runner.poll() is not None:
            raise AssertionError(f"the runner ended ({runner.returncode}) first: {_output(world)}")
        time.sleep(0.02)
    raise AssertionError(f"no such journal record within {timeout} s: {_journal_events(world)}")


def _output(world: World) -> str:
    return "\n".join(path.read_text() for path in sorted(world.journal_dir.glob("runner-*.out")))


def _state(world: World) -> tuple[Any, ...]:
    return world.hpa(), world.sizes(), world.mode(), world.hold()


def _after_the_stop_traffic_returns(world: World, runner: subprocess.Popen[str]) -> None:
    """Once the run has stopped for a quiet service, traffic returns, so the rollback's health gate
    has answers to judge (with none it waits out its 30 s and says so), then the runner ends."""
    _wait_for_record(world, runner, lambda r: r["event"] == "run_stopped")
    world.quiet.clear()
    runner.wait(timeout=120)


def _pod_modes(world: World) -> set[str]:
    return {
        json.dumps({k: m[k] for k in ("model", "precision", "shedding")}, sort_keys=True) for m in world.pod_modes()
    }


# --- The success path ----------------------------------------------------------------------------


def test_under_a_surge_it_raises_capacity_degrades_and_verifies_recovery(world: World) -> None:
    """The emergency-stop success path end to end: the added replicas bring p99 down, and that is
    not read as the incident being over; the fleet degrades and the service is verified in SLO."""
    done = world.runbook("run", *SURGE)

    assert done.returncode == 0, done.stdout + done.stderr
    assert world.hpa() == {"min": 3, "max": 6}
    assert {k: world.mode()[k] for k in ("model", "precision", "shedding")} == DEGRADED
    assert _pod_modes(world) == {json.dumps(DEGRADED, sort_keys=True)}
    records = _records(world)
    (verified,) = [r for r in records if r["event"] == "run_verified"]
    gate = verified["gate"]
    assert gate["verdict"] == "pass"
    assert gate["raw"]["answered"] >= 100, "judged on enough answers for a p99"
    assert {"latency", "serverErrors", "refusals", "refusalBudget"} <= set(gate["raw"])
    started = [r["step"] for r in records if r["event"] == "step_started"]
    assert started[-1] == "mode", "the trigger held: the surge was still on, whatever p99 said"
    print(f"\nemergency-stop under a surge: p99 {gate['raw']['p99Seconds']} s over {gate['raw']['answered']:g} answers")


# --- Resume never strands a mode ------------------------------------------------------------------


def test_a_mode_switch_killed_after_it_was_applied_is_rolled_back_when_resumed_after_the_surge(world: World) -> None:
    """kill -9 once the journal shows `step_applied mode`; the surge ends; `resume` rolls back
    everything, the ConfigMap and the pods' mode included."""
    before, modes_before = _state(world), _pod_modes(world)

    def slow_verification(event: str, plural: str, obj: dict[str, Any]) -> None:
        # The mode ConfigMap was just written (inside the step's apply): the apply's own read of the
        # endpoints passes, the verification's first one hangs 5 s, so the kill lands between the
        # two, after the change and before it is confirmed, every time.
        if plural == "configmaps" and obj["metadata"]["name"] == "model-service-full-mode" and event == "MODIFIED":
            world.store.faults[("GET", "endpointslices")] = [None, ApiStatus(504, "Timeout", "etcd slow", delay=5)]

    world.store.listeners.append(slow_verification)
    runner = world.start_runbook("run", *SURGE)
    _wait_for_record(world, runner, lambda r: r["event"] == "step_applied" and r.get("step") == "mode")
    world.store.listeners.remove(slow_verification)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    # The kill can land before the verification's read reached the API: its slow answer would then
    # meet the resumed run's trigger probe (inconclusive, no windows read) instead.
    world.store.faults.pop(("GET", "endpointslices"), None)
    assert "step_verified" not in _journal_events(world)[-2:], "killed before the mode was confirmed"
    assert world.mode()["model"] == "light", "the mode switch had landed"
    world.quiet.set()  # the surge is over while the runner is dead

    run_id = next(world.journal_dir.glob("*.jsonl")).stem
    resumed = world.start("runbook", "resume", run_id, "--env", "dev", "--kube-url", world.kube_url,
                          "--window", "1", "--break-lock")  # fmt: skip
    _after_the_stop_traffic_returns(world, resumed)

    assert resumed.returncode == 1, _output(world)
    assert "stopped:" in _output(world)
    assert "trigger no longer holds before mode" in _output(world)
    (started,) = [r for r in _records(world) if r["event"] == "rollback_started"]
    assert started["steps"][0] == "mode", "the interrupted step is rolled back first"
    (stopped,) = [r for r in _records(world) if r["event"] == "run_stopped"]
    windows = stopped["trigger"]["raw"]["windows"]
    assert len(windows) == 3, "one quiet window is not the end of a surge: three in a row are"
    assert all(window["demand"] < 0.7 for window in windows)
    assert _state(world) == before
    assert _pod_modes(world) == modes_before, "the pods were told too, not only the ConfigMap"


# --- One lock per run -------------------------------------------------------------------------------


def test_the_same_operator_starting_the_run_twice_is_refused_and_the_first_keeps_its_lock(world: World) -> None:
    first = world.start_runbook("run", *CAPACITY_ONLY, "--operator", "oncall@laptop")
    _wait_for_record(world, first, lambda r: r["event"] == "lock_acquired")
    run_id = next(world.journal_dir.glob("*.jsonl")).stem

    second = world.runbook("run", *CAPACITY_ONLY, "--operator", "oncall@laptop")
    first.wait(timeout=120)

    assert second.returncode == 2, second.stdout + second.stderr
    assert f"held by oncall@laptop/{run_id}/" in second.stderr
    assert first.returncode == 0, _output(world)
    assert "lost the environment's lock" not in _output(world)
    assert world.hpa() == {"min": 2, "max": 6}


# --- Deadlines ---------------------------------------------------------------------------------------


def test_a_hung_patch_fails_its_step_within_the_timeout_and_the_rollback_completes(world: World) -> None:
    # The API server hangs on the HPA patch (a stuck etcd), answering 504 only after 30 s.
    world.store.faults[("PATCH", "horizontalpodautoscalers")] = [
        ApiStatus(504, "Timeout", "request did not complete within the allotted timeout", delay=30)
    ]
    failed = world.runbook("run", *CAPACITY_ONLY[:-1], "8")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    records = _records(world)
    began = next(_at(r) for r in records if r["event"] == "step_started" and r["step"] == "hpa-bounds")
    rollback = next(_at(r) for r in records if r["event"] == "rollback_started")
    assert rollback - began <= 8 + 5, f"the step took {rollback - began:.1f} s of its 8"
    assert "out of time" in failed.stdout or "timed out" in failed.stdout.lower() or "Timeout" in failed.stdout
    assert world.hpa() == {"min": 1, "max": 6}
    assert world.hold() is None
    print(f"\nhung PATCH: step failed {rollback - began:.1f} s after it began (timeout 8 s)")


def test_sigterm_during_the_rollback_finishes_it_and_journals_that_it_did(world: World) -> None:
    world.crash["new pods"] = True  # the new replicas break: verification fails, the run rolls back
    runner = world.start_runbook("run", *CAPACITY_ONLY[:-1], "6")
    _wait_for_record(world, runner, lambda r: r["event"] == "rollback_started")
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=120)

    assert runner.returncode == 1, _output(world)
    assert "Traceback" not in _output(world)
    events = _journal_events(world)
    assert "rollback_continues" in events
    assert events.index("rollback_continues") < events.index("rollback_done") < events.index("run_finished")
    assert world.hpa() == {"min": 1, "max": 6}
    assert world.hold() is None


# --- Gates that see what clients see ----------------------------------------------------------------


@pytest.mark.parametrize("world", [{"max_queue": 1}], indirect=True)
def test_the_recovery_gate_counts_refused_requests(world: World) -> None:
    """Clients refused at the door are not a recovered service, however fast the answers are."""
    stop = threading.Event()

    def burst() -> None:
        with httpx.Client(base_url=world.proxy_url, timeout=5) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/v1/intent", json={"text": "where is my card"})

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        runner = world.start_runbook("run", "--qps", "10", "--replica-rps", "100", "--model", "full", "--precision",
                                     "fp32", "--shedding", "off", "--recovery-timeout", "8")  # fmt: skip
        _wait_for_record(world, runner, lambda r: r["event"] == "run_verified")
    finally:
        stop.set()  # the burst ends: the rollback's own gate can pass
        for thread in threads:
            thread.join(timeout=10)
    runner.wait(timeout=120)

    assert runner.returncode == 1, _output(world)
    (verified,) = [r for r in _records(world) if r["event"] == "run_verified"]
    raw = verified["gate"]["raw"]
    assert verified["gate"]["verdict"] == "fail"
    assert raw["refusals"] > 1.0, raw
    assert raw["shed"] > 0.05 * raw["requests"], raw
    assert world.hpa() == {"min": 1, "max": 6}
    print(f"\nrefused {raw['shed']:g} of {raw['requests']:g} requests: not recovered")


TRIPPING_BREAKER = {"trip_above": 0.0002, "recover_below": 0.0001, "trip_after": 2.5, "window": 2.0,
                    "min_samples": 5, "recover_after": 600.0}  # fmt: skip
"""A breaker that opens on any traffic (p99 over 0.2 ms for 2.5 s) and stays open."""


@pytest.mark.parametrize("world", [{"breaker": TRIPPING_BREAKER}], indirect=True)
def test_the_services_own_breaker_acting_first_is_not_read_as_the_incident_ending(world: World) -> None:
    # Traffic far below what the fleet carried before (demand ~0.04), but the pods' breaker has
    # already switched them to the light model: the incident is on.
    _wait(lambda: _breaker_open(world), timeout=30)
    done = world.runbook("run", "--qps", "2", "--replica-rps", "1000", "--capacity-timeout", "60")

    assert done.returncode == 0, done.stdout + done.stderr
    assert _pod_modes(world) == {json.dumps(DEGRADED, sort_keys=True)}
    (trigger,) = [r for r in _records(world) if r["event"] == "step_started" and r["step"] == "mode"]
    assert trigger


def _breaker_open(world: World) -> bool:
    statuses = [httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {world.token}"}).json()
                for url in world.ready_pods()]  # fmt: skip
    return bool(statuses) and all(status["breaker"]["open"] for status in statuses)


# --- Planning in a total outage ------------------------------------------------------------------------


def test_with_no_ready_pod_a_plan_with_figures_is_made_from_the_figures(world: World) -> None:
    for pod in world.pods:
        pod.stop()
    _wait(lambda: not world.ready_pods(), timeout=30)

    planned = world.runbook("plan", "--qps", "10", "--replica-rps", "10")

    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert '"readyBefore": 0' in planned.stdout
    assert '{"max": 6, "min": 1} -> {"max": 6, "min": 2}' in planned.stdout


# --- Messages --------------------------------------------------------------------------------------------


def test_a_plan_without_a_region_says_how_to_give_one_without_a_traceback(world: World, tmp_path: Path) -> None:
    env = {k: v for k, v in {**os.environ, **world.aws_env}.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), PEAKGUARD_JOURNAL_DIR=str(world.journal_dir))
    planned = subprocess.run(
        [*PEAKGUARD, "runbook", "plan", "emergency-stop", "--env", "dev", "--kube-url", world.kube_url],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip

    assert planned.returncode == 2
    assert "no AWS region: pass --region, or set AWS_REGION" in planned.stderr
    assert "Traceback" not in planned.stderr + planned.stdout


def _at(record: dict[str, Any]) -> float:
    import datetime

    return datetime.datetime.fromisoformat(str(record["at"]).replace("Z", "+00:00")).timestamp()


# --- Killed at every step boundary ------------------------------------------------------------------


def test_killed_at_every_step_boundary_and_resumed_it_ends_as_an_uninterrupted_run(world: World) -> None:
    """SIGKILL the runner at each step boundary of emergency-stop (each step done or skipped), resume
    it, and compare with an uninterrupted run: the same HPA, node groups, mode and hold (its run id
    aside). One environment, put back between kills; the kill after `mode` was applied, mid-step,
    is its own test above."""
    initial = _state(world)
    complete = world.runbook("run", *CAPACITY_ONLY)
    assert complete.returncode == 0, complete.stdout + complete.stderr
    expected = _without_run(_state(world))
    boundaries = [r for r in _records(world) if r["event"] in ("step_done", "step_skipped")]
    assert len(boundaries) == 6, [r["step"] for r in boundaries]

    for index, boundary in enumerate(boundaries):
        _put_back(world, initial)
        runner = world.start_runbook("run", *CAPACITY_ONLY)
        seen = _count_of(world, boundary)
        _wait_for_record(world, runner, lambda r, b=boundary, n=seen: _count_of(world, b) > n)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        run_id = _newest_run(world)
        resumed = world.peakguard("runbook", "resume", run_id, "--env", "dev", "--kube-url", world.kube_url,
                                  "--window", "1", "--break-lock")  # fmt: skip

        where = f"killed after {boundary['event']} {boundary['step']} ({index + 1} of {len(boundaries)})"
        assert resumed.returncode == 0, f"{where}: {resumed.stdout}{resumed.stderr}"
        assert _without_run(_state(world)) == expected, where
        assert (world.hold() or {}).get("runId") == run_id, f"{where}: the hold names the resumed run"


def _count_of(world: World, boundary: dict[str, Any]) -> int:
    """How many records of this kind and step all journals hold (journals of earlier kills included)."""
    count = 0
    for journal in world.journal_dir.glob("*.jsonl"):
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            count += record.get("event") == boundary["event"] and record.get("step") == boundary["step"]
    return count


def _newest_run(world: World) -> str:
    return max(world.journal_dir.glob("*.jsonl"), key=lambda path: path.stat().st_mtime).stem


def _without_run(state: tuple[Any, ...]) -> tuple[Any, ...]:
    hpa, sizes, mode, hold = state
    return hpa, sizes, mode, None if hold is None else {k: v for k, v in hold.items() if k not in ("runId", "since")}


def _put_back(world: World, state: tuple[Any, ...]) -> None:
    """The environment as the first plan found it, so each kill starts from the same place."""
    hpa, sizes, _, hold = state
    assert hold is None
    world.store.patch("horizontalpodautoscalers", "peakguard", "model-service-full",
                      {"spec": {"minReplicas": hpa["min"], "maxReplicas": hpa["max"]}},
                      content_type="application/merge-patch+json")  # fmt: skip
    eks = world.eks()
    for group, size in sizes.items():
        eks.update_nodegroup_config(clusterName=world.targets.cluster.name, nodegroupName=group,
                                    scalingConfig={"minSize": size["min"], "desiredSize": size["desired"],
                                                   "maxSize": size["max"]})  # fmt: skip
    with contextlib.suppress(world.ssm().exceptions.ParameterNotFound):
        world.ssm().delete_parameter(Name=hold_parameter_name("dev"))
    assert _state(world) == state, "put back as the first plan found it"
