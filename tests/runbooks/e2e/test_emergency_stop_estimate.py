"""emergency-stop's plan without `--replica-rps`, as the README advertises it: the replicas needed
come from the throughput the ready full-model pods report (the median of their
admission.throughput_rps in /admin/status), with 30% headroom on top."""

from __future__ import annotations

import math
import re
import time

import httpx

from tests.runbooks.e2e.conftest import World, _wait


def _reported_throughputs(world: World) -> list[float | None]:
    statuses = [
        httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {world.token}"}, timeout=10).json()
        for url in world.ready_pods()
    ]
    return [status["admission"]["throughput_rps"] for status in statuses]


def test_the_plan_sizes_the_fleet_from_the_throughput_the_pods_report(world: World) -> None:
    # The lab's traffic gives every pod a cost model after its first batches.
    _wait(lambda: all(value for value in _reported_throughputs(world)), timeout=60)
    world.quiet.set()  # the cost models settle: what this test reads is what the runbook reads
    time.sleep(1.0)
    reported = [float(value or 0) for value in _reported_throughputs(world)]
    median = sorted(reported)[len(reported) // 2]

    planned = world.runbook("plan", "--qps", "100")

    assert planned.returncode == 0, planned.stdout + planned.stderr
    basis = planned.stdout.split("based on:", 1)[1].splitlines()[0]
    assert float(re.search(r'"replicaRps": ([0-9.]+)', basis)[1]) == round(median, 2)  # type: ignore[index]
    needed = math.ceil(1.3 * math.ceil(100 / median))
    assert f'"needed": {needed}' in basis
    assert _reported_throughputs(world) == reported, "planning read the pods and changed nothing"


def test_a_given_replica_rps_is_used_as_it_is_not_measured(world: World) -> None:
    planned = world.runbook("plan", "--qps", "100", "--replica-rps", "7")

    assert planned.returncode == 0, planned.stdout + planned.stderr
    basis = planned.stdout.split("based on:", 1)[1].splitlines()[0]
    assert '"replicaRps": 7' in basis
    assert f'"needed": {math.ceil(1.3 * math.ceil(100 / 7))}' in basis
